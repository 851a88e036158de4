"""A CMK rotation on the HA bed: every node converges on the new key_id, and the key_id
agreement check (`kmsplug key-agreement`) keeps `kmsplug migrate` from running while the
nodes disagree.

A plugin learns of a rotation when it next wraps under the CMK (its health probe does, every
--health-probe-interval: 5 s on the bed, 30 s by default), when it re-reads the key (every
5 minutes) or at once on SIGHUP; each apiserver asks its plugin's Status every minute, or
sooner when its readiness is probed. To hold a disagreement long enough to test it, two
nodes' plugins run with an hour between probes until they are sent SIGHUP. Figures are
printed as `HA rotation: ...` lines.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ha_bed import HaBed, Node, read_values, stored, write_objects

from kmsplug.cluster.agreement import key_id_hash

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CONVERGE_TIMEOUT = 300.0


def kmsplug(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kmsplug", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def sockets(ha: HaBed, flag: str = "--socket") -> list[str]:
    return [arg for node in ha.nodes for arg in (flag, node.plugin.endpoint.url)]


def apiservers(ha: HaBed) -> list[str]:
    """One kubeconfig (the cluster CA verifies every apiserver), each apiserver's URL."""
    urls = [arg for node in ha.nodes for arg in ("--apiserver", node.server_url)]
    return ["--kubeconfig", str(ha.admin_conf), *urls]


def agreement(*args: str) -> tuple[int, dict[str, object]]:
    done = kmsplug("key-agreement", *args, "--json")
    assert done.returncode in (0, 1, 2), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def wait_for(what: str, condition: Callable[[], bool], timeout: float = CONVERGE_TIMEOUT) -> float:
    """Seconds until `condition` held."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.5)
    return time.monotonic() - started


def writes_under(node: Node, ha: HaBed, key_id: str) -> bool:
    (name,) = write_objects(node, "secrets", 1, f"probe-{node.name}")
    return stored(ha, "secrets", name)[1] == key_id


def etcd_flags(ha: HaBed) -> list[str]:
    assert ha.etcd is not None
    tls = ha.etcd.tls()
    assert tls.ca_file and tls.cert_file and tls.key_file
    return [
        *("--etcd", ha.etcd.urls[0], "--cacert", tls.ca_file),
        *("--cert", tls.cert_file, "--key", tls.key_file),
    ]


@contextmanager
def slow_to_notice(nodes: list[Node]) -> Iterator[None]:
    """These nodes' plugins probe hourly (so a rotation reaches them only by SIGHUP or the
    5-minute re-read) until the block ends; then as the bed runs them."""
    saved = {node.name: list(node.plugin.args) for node in nodes}
    try:
        for node in nodes:
            node.plugin.args = [*node.plugin.args, "--health-probe-interval", "3600"]
            node.restart_plugin()
        yield
    finally:
        for node in nodes:
            node.plugin.args = saved[node.name]
            node.restart_plugin()


def test_rotation_converges_and_agreement_gates_migrate(ha: HaBed, tmp_path: Path) -> None:
    kms = ha.shared_kms
    old_key = kms.key_id()
    for source in (sockets(ha), apiservers(ha)):
        code, document = agreement(*source)
        assert code == 0 and document["verdict"] == "agree", document
        assert {n["key_id_hash"] for n in document["nodes"]} == {key_id_hash(old_key)}
    before = {node.name: write_objects(node, "secrets", 3, "pre-rotation") for node in ha.nodes}
    first, late = ha.node("a"), [ha.node("b"), ha.node("c")]

    with slow_to_notice(late):
        rotated = time.monotonic()
        ha.fake.rotate_key(kms.cmk)
        new_key = kms.key_id()
        assert new_key != old_key
        noticed_s = wait_for("plugin a to notice", lambda: first.plugin_status()[1] == new_key)

        # the plugins disagree: the check says so, migrate refuses and rewrites nothing
        code, document = agreement(*sockets(ha))
        assert code == 1 and document["verdict"] == "disagree", document
        refused = kmsplug(
            "migrate", "--kubeconfig", str(ha.admin_conf), *sockets(ha, "--node-socket")
        )
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "refusing to migrate" in refused.stderr and "disagree" in refused.stderr
        assert {stored(ha, "secrets", name)[1] for m in before.values() for name in m} == {old_key}
        forced = kmsplug(
            "migrate", "--kubeconfig", str(ha.admin_conf), *sockets(ha, "--node-socket"),
            "--skip-key-agreement", "--dry-run",
        )  # fmt: skip
        assert forced.returncode == 0 and "would rewrite" in forced.stdout, forced.stderr
        # so do the apiservers, once a's has asked its plugin (a readiness probe asks)
        apiservers_s = wait_for(
            "the apiservers to disagree",
            lambda: agreement(*apiservers(ha))[1]["verdict"] == "disagree",
        )
        unguarded = kmsplug("migrate", "--kubeconfig", str(ha.admin_conf), *apiservers(ha)[2:])
        assert unguarded.returncode == 3, unguarded.stdout + unguarded.stderr

        # the operator's step: SIGHUP the others; how long until every node writes under it
        started = time.monotonic()
        for node in late:
            node.plugin.signal(signal.SIGHUP)
        plugins_s = wait_for(
            "every plugin to report the new key_id",
            lambda: all(node.plugin_status()[1] == new_key for node in ha.nodes),
        )
        agreed_s = wait_for(
            "the apiservers to agree on the new key_id",
            lambda: agreement(*apiservers(ha), "--expect-key-id", new_key)[0] == 0,
        )
        for node in ha.nodes:
            wait_for(
                f"node {node.name} to write under it", lambda n=node: writes_under(n, ha, new_key)
            )
        writes_s = time.monotonic() - started
    print(
        f"\nHA rotation: plugin a noticed by its own probe after {noticed_s:.1f} s, its "
        f"apiserver {apiservers_s + noticed_s:.0f} s after the rotation; after SIGHUP to the "
        f"others: all plugins report it in {plugins_s:.1f} s, all apiservers agree in "
        f"{agreed_s + plugins_s:.1f} s, all write under it in {writes_s:.1f} s "
        f"({time.monotonic() - rotated:.0f} s after the rotation)"
    )

    migrated = kmsplug(
        "migrate", "--kubeconfig", str(ha.admin_conf), *apiservers(ha)[2:],
        "--state-file", str(tmp_path / "migrate.json"),
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "agree" in migrated.stderr and "rewrote" in migrated.stdout
    verified = kmsplug("verify", *etcd_flags(ha), "--expect-key-id", new_key)
    assert verified.returncode == 0, verified.stdout
    for node in ha.nodes:
        for made in before.values():
            assert read_values(node, "secrets", list(made)) == made


def test_rotation_converges_without_any_signal(ha: HaBed) -> None:
    """No SIGHUP: each plugin finds the new version at its next health probe (it wraps
    under the primary version), each apiserver at its next Status poll."""
    kms = ha.shared_kms
    ha.fake.rotate_key(kms.cmk)
    new_key = kms.key_id()
    started = time.monotonic()
    seen: dict[str, float] = {}

    def all_plugins() -> bool:
        for node in ha.nodes:
            if node.name not in seen and node.plugin_status()[1] == new_key:
                seen[node.name] = time.monotonic() - started
        return len(seen) == len(ha.nodes)

    wait_for("every plugin to notice", all_plugins, timeout=420)
    agreed = wait_for(
        "the apiservers to agree",
        lambda: agreement(*apiservers(ha), "--expect-key-id", new_key)[0] == 0,
        timeout=300,
    )
    for node in ha.nodes:
        wait_for(f"node {node.name} to write under it", lambda n=node: writes_under(n, ha, new_key))
    print(
        f"\nHA rotation (no signal, probes every {ha.plugin_args[-1]} s): plugins noticed after "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(seen.items()))
        + f"; apiservers agree after {max(seen.values()) + agreed:.0f} s; all write under it "
        f"after {time.monotonic() - started:.0f} s"
    )
