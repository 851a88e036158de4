"""Plugins restarted, killed and lost on the HA bed while the API serves steady traffic.

The load (ha_load.py) sends creates, reads, updates, lists and deletes of Secrets (KMS v2)
and ConfigMaps (KMS v1) to all three apiservers; every request is checked (status and
data). Restarting the plugins one at a time, gracefully or with kill -9, must fail none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from ha_bed import HaBed, read_values, write_objects
from ha_load import MixedLoad, Outcome

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

WARM_REQUESTS = 40
"""Requests the load must have made before the first restart, and after each one."""


def run_load(ha: HaBed) -> MixedLoad:
    return MixedLoad([(node.name, node.server_url) for node in ha.nodes], ha.token).start()


def wait_for_requests(load: MixedLoad, since: float, count: int, timeout: float = 300) -> None:
    """Let the load make `count` more requests after `since` (its clock), within `timeout`."""
    deadline = time.monotonic() + timeout
    while load.count(since) < count:
        assert time.monotonic() < deadline, f"the load stalled: {load.summary()}"
        time.sleep(0.5)


@dataclass(frozen=True)
class Window:
    node: str
    began: float
    ended: float
    gap: float

    def covers(self, outcome: Outcome) -> bool:
        """Whether the request was under way at some moment of the window."""
        return outcome.at <= self.ended and outcome.at + outcome.ms / 1000 >= self.began


def restart_each_plugin(ha: HaBed, *, kill: bool) -> tuple[MixedLoad, list[Window]]:
    """Restart the plugins one at a time under load; the load and each node's window."""
    load = run_load(ha)
    windows = []
    try:
        wait_for_requests(load, 0.0, WARM_REQUESTS)
        for node in ha.nodes:
            began = load.now()
            gap = node.restart_plugin(kill=kill)
            windows.append(Window(node.name, began, load.now(), gap))
            wait_for_requests(load, load.now(), WARM_REQUESTS)
    finally:
        load.stop()
    print(f"\nHA restart ({'kill -9' if kill else 'SIGTERM'}): {load.summary()}")
    for window in windows:
        to_it = [o for o in load.outcomes if o.node == window.node and window.covers(o)]
        print(
            f"  node {window.node}: plugin back after {window.gap:.1f} s, "
            f"{len(to_it)} requests to that node meanwhile"
        )
    assert load.summary()["requests"] >= WARM_REQUESTS * (len(ha.nodes) + 1)
    for node in ha.nodes:
        node.wait_kms(healthy=True)
    return load, windows


def test_a_rolling_restart_of_the_plugins_fails_no_request(ha: HaBed) -> None:
    """SIGTERM, one node at a time: each plugin finishes what it has in flight, and the
    apiservers hold new KMS v1 calls until it is back (the v1 provider's timeout is
    longer than a restart); KMS v2 traffic never needs the plugin."""
    load, _ = restart_each_plugin(ha, kill=False)
    assert not load.failures, f"{len(load.failures)} failed:\n{load.describe_failures()}"


def test_kill_9_of_each_plugin_loses_only_the_v1_calls_in_flight(ha: HaBed) -> None:
    """kill -9, one node at a time: no KMS v2 request fails, and the only KMS v1 requests
    that fail are the ones the killed process held (the connection reset under them):
    on that node, at that moment, none once the plugin is back."""
    load, windows = restart_each_plugin(ha, kill=True)
    failures = load.failures
    print(f"  failed: {len(failures)}", load.describe_failures(), sep="\n")
    assert not [o for o in failures if o.resource == "secrets"], "a KMS v2 request failed"
    for failure in failures:
        window = next(w for w in windows if w.node == failure.node)
        assert window.covers(failure), failure  # on the killed node, while it restarted
        assert "Unavailable" in failure.failure and "DeadlineExceeded" not in failure.failure
    assert len(failures) <= len(windows) * load.workers  # at most the calls in flight


def test_one_plugin_down_fails_its_node_only(ha: HaBed) -> None:
    """Node c's plugin stopped for good: c's apiserver reports its KMS providers failing,
    a and b keep serving every read and write, including what c wrote before."""
    down = ha.node("c")
    written = {r: write_objects(down, r, 3, "by-c") for r in ("secrets", "configmaps")}
    down.stop_plugin()
    down.wait_kms(healthy=False)
    status, checks = down.kms_health()
    assert status != 200 and "kms-provider" in checks and "failed" in checks, checks
    load = run_load(ha)  # all three nodes, to show what c still does
    try:
        for node in (ha.node("a"), ha.node("b")):
            for resource, made in written.items():
                assert read_values(node, resource, list(made)) == made
            write_objects(node, "secrets", 2, f"while-c-down-{node.name}")
            write_objects(node, "configmaps", 2, f"while-c-down-{node.name}")
        wait_for_requests(load, 0.0, WARM_REQUESTS * 2)
    finally:
        load.stop()
    healthy_nodes = [o for o in load.outcomes if o.node != "c"]
    assert healthy_nodes and not [o for o in healthy_nodes if o.failure], load.describe_failures()
    on_c = [o for o in load.outcomes if o.node == "c"]
    failed_on_c = sorted({f"{o.resource} {o.operation}" for o in on_c if o.failure})
    print(f"\none plugin down: a and b {len(healthy_nodes)} requests, none failed; "
          f"c {len(on_c)} requests, failed kinds: {failed_on_c}")  # fmt: skip
    for name in ("a", "b"):
        assert ha.node(name).kms_healthy(), ha.node(name).kms_health()
