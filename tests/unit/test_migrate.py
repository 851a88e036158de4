"""Migration bookkeeping that a live cluster rarely exercises: conflicts, deletions, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kmsplug.cluster.migrate import MigrationResult, MigrationState, Migrator


class Obj:
    def __init__(self, name: str, version: int) -> None:
        self.body = {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(version)}}

    def to_dict(self) -> dict[str, Any]:
        return {"metadata": dict(self.body["metadata"])}

    def __getitem__(self, key: str) -> Any:
        return self.body[key]


class FlakyResource:
    """Answers replace with 409 until the caller sends the latest resourceVersion."""

    def __init__(self) -> None:
        self.latest = 7
        self.writes: list[str] = []
        self.gone: set[str] = set()

    def replace(self, body: dict[str, Any], namespace: str, **_: Any) -> None:
        name = body["metadata"]["name"]
        if name in self.gone:
            raise ApiException(status=404)
        if body["metadata"]["resourceVersion"] != str(self.latest):
            raise ApiException(status=409)
        self.writes.append(name)

    def get(self, name: str, namespace: str) -> Obj:
        if name in self.gone:
            raise ApiException(status=404)
        return Obj(name, self.latest)


def migrator(tmp_path: Path) -> Migrator:
    m = Migrator.__new__(Migrator)  # no kubeconfig: exercise the bookkeeping only
    m.dry_run = False
    m.state = MigrationState.load(tmp_path / "state.json")
    return m


def test_conflict_is_retried_with_the_latest_version(tmp_path: Path) -> None:
    resource, result = FlakyResource(), MigrationResult()
    migrator(tmp_path)._rewrite(resource, Obj("a", 3), result)
    assert resource.writes == ["a"]
    assert (result.rewritten, result.conflicts) == (1, 1)


def test_deleted_meanwhile_is_counted_not_fatal(tmp_path: Path) -> None:
    resource, result = FlakyResource(), MigrationResult()
    resource.gone.add("b")
    migrator(tmp_path)._rewrite(resource, Obj("b", 7), result)
    assert (result.rewritten, result.gone) == (0, 1)


def test_endless_conflicts_give_up(tmp_path: Path) -> None:
    class Hot(FlakyResource):
        def get(self, name: str, namespace: str) -> Obj:
            self.latest += 1  # someone writes between every get and replace
            return Obj(name, self.latest - 1)

    with pytest.raises(RuntimeError, match="conflicting"):
        migrator(tmp_path)._rewrite(Hot(), Obj("c", 1), MigrationResult())


def test_state_file_round_trip(tmp_path: Path) -> None:
    state = MigrationState.load(tmp_path / "s.json")
    state.mark("secrets", "ns/z")
    state.save()
    assert MigrationState.load(tmp_path / "s.json").done == {"secrets": "ns/z"}
