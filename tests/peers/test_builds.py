"""build-peer.sh: one cached build per peer and pinned source, a precise message otherwise."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from peers.runners import BUILD, PEERS, SOURCES_MISSING, PeerUnavailable, peer_binary


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(BUILD), *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.timeout(1500)  # a cold build when `make e2e-deps` has not cached it yet
@pytest.mark.parametrize("name", PEERS)
def test_each_peer_builds_once_then_comes_from_the_cache(name: str) -> None:
    try:
        binary = peer_binary(name)  # builds it if this machine has not yet
    except PeerUnavailable as exc:
        pytest.skip(str(exc))
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert name in binary.parent.name  # keyed by name (and a hash of its sources)
    built_at = binary.stat().st_mtime_ns
    started = time.monotonic()
    again = run(name)
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip()) == binary
    assert "building" not in again.stderr  # nothing was built the second time
    assert binary.stat().st_mtime_ns == built_at
    assert time.monotonic() - started < 60  # hashing the sources, no compiling


def test_missing_sources_say_where_they_were_looked_for(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-peers"
    answer = run("aws-encryption-provider", env={"KMSPLUG_PEERS_DIR": str(missing)})
    assert answer.returncode == SOURCES_MISSING
    assert str(missing) in answer.stderr and "KMSPLUG_PEERS_DIR" in answer.stderr
    assert answer.stdout == ""


def test_unknown_peer_is_refused() -> None:
    answer = run("not-a-peer")
    assert answer.returncode == 2 and "unknown peer 'not-a-peer'" in answer.stderr


def test_a_refused_build_step_is_reported_and_caches_nothing(tmp_path: Path) -> None:
    """A copy of the sources whose build.sh fails: the step's output is shown, exit 1,
    and no binary is left in the cache for the next run to trust."""
    sources = tmp_path / "peers"
    sources.mkdir()
    (sources / "build.sh").write_text("echo 'go: module lookup disabled' >&2; exit 1\n")
    (sources / "ack-kms-plugin-src.tar.gz").write_bytes(b"not a tarball")
    cache = tmp_path / "cache"
    env = {"KMSPLUG_PEERS_DIR": str(sources), "KMSPLUG_CACHE": str(cache)}
    answer = run("ack-kms-plugin", env=env)
    assert answer.returncode == 1
    assert "build.sh ack-kms-plugin failed" in answer.stderr
    assert "go: module lookup disabled" in answer.stderr
    assert not list(cache.glob("peer-ack-kms-plugin-*/ack-kms-plugin"))
