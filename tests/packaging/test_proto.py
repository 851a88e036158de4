"""The committed protobuf/gRPC modules are what proto/ and the pinned generator make.

They are committed so that every wheel ships them; these checks fail when a .proto file
changed without `make proto`, when the modules were edited by hand, or when the package's
dependency floors no longer cover the generator's version (the generated code refuses to
import under an older grpcio or protobuf).
"""

from __future__ import annotations

import re
import runpy
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "python" / "kmsplug" / "_proto"
HAND_WRITTEN = {"__init__.py", "v1beta1/__init__.py", "v2/__init__.py"}


def generated_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_committed_modules_match_a_fresh_generation(tmp_path: Path) -> None:
    generate = runpy.run_path(str(ROOT / "proto" / "generate.py"))["generate"]
    generate(tmp_path)
    fresh = generated_files(tmp_path / "kmsplug" / "_proto")
    committed = generated_files(COMMITTED)
    assert set(committed) - set(fresh) == HAND_WRITTEN, "run `make proto` and commit"
    stale = [name for name, data in fresh.items() if committed.get(name) != data]
    assert not stale, f"{stale} differ from proto/: run `make proto` and commit"


def floor(requirement: str) -> tuple[Version, Version | None]:
    """The lowest version a `name>=x,<y` requirement allows, and its exclusive ceiling."""
    specifiers = Requirement(requirement).specifier
    lows = [Version(s.version) for s in specifiers if s.operator == ">="]
    highs = [Version(s.version) for s in specifiers if s.operator == "<"]
    assert len(lows) == 1, requirement
    return lows[0], min(highs) if highs else None


def dependency(name: str) -> str:
    document = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (found,) = [d for d in document["project"]["dependencies"] if Requirement(d).name == name]
    return str(found)


def test_dependency_floors_cover_the_generated_code() -> None:
    grpc_text = (COMMITTED / "v2" / "api_pb2_grpc.py").read_text()
    grpc_generated = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_text)
    pb_text = (COMMITTED / "v2" / "api_pb2.py").read_text()
    pb_generated = re.search(r"# Protobuf Python Version: ([0-9.]+)", pb_text)
    assert grpc_generated and pb_generated
    grpc_low, _ = floor(dependency("grpcio"))
    assert grpc_low >= Version(grpc_generated.group(1))
    # protobuf's runtime accepts gencode of its own major version that is not newer.
    pb_low, pb_ceiling = floor(dependency("protobuf"))
    gencode = Version(pb_generated.group(1))
    assert pb_low >= gencode
    assert pb_ceiling is not None and pb_ceiling <= Version(f"{gencode.major + 1}")
