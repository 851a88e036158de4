"""pyproject.toml's extras, kmsplug.extras and requirements-dev.txt tell the same story."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kmsplug.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OPTIONAL: dict[str, list[str]] = PROJECT["optional-dependencies"]


def pins() -> dict[str, str]:
    """requirements-dev.txt: distribution -> pinned version."""
    pinned = {}
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            name, version = text.split("==")
            pinned[canonicalize_name(name)] = version
    return pinned


def test_every_extra_is_known_to_kmsplug_extras() -> None:
    assert set(OPTIONAL) == {*EXTRAS, "all"}
    (everything,) = (Requirement(r) for r in OPTIONAL["all"])
    assert everything.name == "kmsplug" and everything.extras == set(EXTRAS)


def test_each_extra_installs_the_modules_it_stands_for() -> None:
    providers = importlib.metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        listed = {canonicalize_name(Requirement(r).name) for r in OPTIONAL[extra]}
        for module in modules:
            owners = {canonicalize_name(d) for d in providers.get(module, [])}
            assert owners & listed, f"{module} is not installed by kmsplug[{extra}]"


def test_make_installs_every_dependency_at_an_allowed_version() -> None:
    """`make run` / `make test` install requirements-dev.txt: core and every extra."""
    pinned = pins()
    wanted = [*PROJECT["dependencies"], *(r for e in EXTRAS for r in OPTIONAL[e])]
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned in requirements-dev.txt"
        assert requirement.specifier.contains(pinned[name]), (name, pinned[name])
