"""The package's shape: no import cycle, no module importing a layer above its own, and one
Python front for the Rust extension. Read from the source (every import statement,
those inside functions and TYPE_CHECKING blocks included), so a change that breaks the
shape fails here, not in a reader's head."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "kmsplug"

#: Lowest first. A module may import from its own layer and the ones below; a module of
#: no listed prefix is in the top layer. Longest prefix wins.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kmsplug", "kmsplug.errors", "kmsplug.endpoint", "kmsplug._proto", "kmsplug._kmsplug"),
    ("kmsplug.core", "kmsplug.extras", "kmsplug.log", "kmsplug.hardening", "kmsplug.sockets"),
    ("kmsplug.encryption_config", "kmsplug.client"),
    ("kmsplug.providers",),
    ("kmsplug.providers.registry",),
    ("kmsplug.sealer",),
    ("kmsplug.service",),
    ("kmsplug.metrics", "kmsplug.servicers", "kmsplug.ops_http"),
    ("kmsplug.server",),
    ("kmsplug.app", "kmsplug.bench", "kmsplug.cluster"),
    ("kmsplug.cli", "kmsplug.__main__"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if not name.startswith("kmsplug._proto"):
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kmsplug modules `name` imports (a `from a import b` of a submodule names a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: relative import (the package imports absolutely)"
            base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m == "kmsplug" or m.startswith("kmsplug.")} - {name}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = {*found, "kmsplug._kmsplug"}
    return {name: imports(name, path, known) for name, path in found.items()}


def layer(name: str) -> int:
    best, best_len = len(LAYERS), -1
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = number, len(prefix)
    return best


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target in edges and target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_only_the_core_front_imports_the_extension() -> None:
    users = sorted(name for name, targets in graph().items() if "kmsplug._kmsplug" in targets)
    assert users == ["kmsplug.core"]


def test_the_checks_see_what_they_check() -> None:
    """A graph that lost its edges would pass everything above."""
    edges = graph()
    assert "kmsplug.core" in edges["kmsplug.sealer"]
    assert "kmsplug.providers.base" in edges["kmsplug.providers.local"]
    assert layer("kmsplug.providers.vault.transit") < layer("kmsplug.sealer")
