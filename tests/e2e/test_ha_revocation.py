"""Revocation is not an outage (HA bed, Alibaba fake).

When the KMS answers that the key is disabled or pending deletion, an operator has
revoked it: kmsplug stops sealing new DEKs under it, so no new data comes to depend on a
key about to be deleted. Writes fail fast and say why (KMS v1 at once: every write asks
the plugin; KMS v2 once the apiserver's cached seed expires, because the plugin's Status
now fails), while reads of what exists go on from the KEKs the plugins hold. When the KMS
only stops answering, reads and writes both go on. Re-enabling the key undoes it all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from ha_bed import HaBed, Node, read_values, write_objects

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

V2_WRITE_TTL = 180.0
"""kube-apiserver writes with its cached seed for 3 min after its last good Status."""


def plugin_refuses(node: Node) -> bool:
    """Whether the plugin's v2 Status fails with the revoked key's status code."""
    try:
        node.plugin_status()
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    return False


def attempt_write(node: Node, resource: str) -> tuple[bool, float, str]:
    """(written, seconds, the apiserver's error message) for one create through `node`."""
    started = time.monotonic()
    try:
        write_objects(node, resource, 1, f"try-{node.name}")
    except Exception as exc:  # the API's refusal is what is measured
        return False, time.monotonic() - started, str(getattr(exc, "body", exc))[:400]
    return True, time.monotonic() - started, ""


def everything_reads_back(ha: HaBed, written: dict[tuple[str, str], dict[str, str]]) -> None:
    for node in ha.nodes:
        for (_, resource), made in written.items():
            assert read_values(node, resource, list(made)) == made, node.name


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition` held."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out after {timeout:.0f} s: {what}"
        time.sleep(1)
    return time.monotonic() - started


def test_a_revoked_key_stops_writes_and_keeps_reads(ha: HaBed) -> None:
    written = {(n.name, r): write_objects(n, r, 3, f"pre-{n.name}") for n in ha.nodes
               for r in ("secrets", "configmaps")}  # fmt: skip
    everything_reads_back(ha, written)  # every plugin has met every node's local KEK

    ha.fake.set_key_state(ha.shared_kms.cmk, "Disabled")
    revoked_at = time.monotonic()
    noticed = wait_until("every plugin to notice", lambda: all(map(plugin_refuses, ha.nodes)), 120)

    # KMS v1: every write asks the plugin, which refuses at once and says why
    for node in ha.nodes:
        ok, seconds, message = attempt_write(node, "configmaps")
        assert not ok and "disabled or pending deletion" in message, message
        assert "DeadlineExceeded" not in message  # an answer, not a timeout
        print(f"\nHA revocation: v1 write through {node.name} refused in {seconds:.2f} s")
    # reads go on, v2 and v1, from the KEKs every plugin holds
    everything_reads_back(ha, written)
    # KMS v2: the apiserver coasts on its seed until its last good Status is 3 min old
    v2_stopped = {}
    for node in ha.nodes:
        wait_until(
            f"v2 writes through {node.name} to stop",
            lambda n=node: not attempt_write(n, "secrets")[0],
            V2_WRITE_TTL + 120,
        )
        v2_stopped[node.name] = time.monotonic() - revoked_at  # at the latest
    ok, _, message = attempt_write(ha.nodes[0], "secrets")
    assert not ok and "expired" in message, message  # the apiserver's own seed expiry
    print(
        f"HA revocation: plugins refused after {noticed:.0f} s; v2 writes stopped at the "
        "latest "
        + ", ".join(f"{k} {v:.0f} s" for k, v in v2_stopped.items())
        + f" after the key was disabled; v2 refusal: {message[:400]}"
    )
    everything_reads_back(ha, written)
    # an apiserver restarted now reads v1 (its plugin opens DEKs with the KEKs it holds),
    # but no v2 data: kube-apiserver needs one Status and one Encrypt before it reads any
    restarted = ha.nodes[-1]
    restarted.stop_apiserver()
    restarted.start_apiserver(ready_path="/livez")
    v1_made = written[("a", "configmaps")]
    assert read_values(restarted, "configmaps", list(v1_made)) == v1_made
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as unreadable:
        read_values(restarted, "secrets", list(written[("a", "secrets")]))
    body = str(unreadable.value.body or "")
    print(f"HA revocation: v2 read through a restarted apiserver: {body[:300]}")

    # re-enabled: writes come back by themselves
    ha.fake.set_key_state(ha.shared_kms.cmk, "Enabled")
    resumed = wait_until(
        "writes through every node again",
        lambda: all(attempt_write(n, r)[0] for n in ha.nodes for r in ("secrets", "configmaps")),
        240,
    )
    print(f"HA revocation: writes back on every node {resumed:.0f} s after re-enabling")
    everything_reads_back(ha, written)


def test_an_unreachable_kms_keeps_reads_and_writes(ha: HaBed) -> None:
    written = {(n.name, r): write_objects(n, r, 2, f"pre-{n.name}") for n in ha.nodes
               for r in ("secrets", "configmaps")}  # fmt: skip
    everything_reads_back(ha, written)
    ha.fake.set_hang(True)
    try:
        for node in ha.nodes:
            node.wait_kms(healthy=False, timeout=180)  # noticed: the KMS does not answer
        assert not any(map(plugin_refuses, ha.nodes))  # unhealthy, not revoked
        for node in ha.nodes:
            for resource in ("secrets", "configmaps"):
                ok, _, message = attempt_write(node, resource)
                assert ok, (node.name, resource, message)
        everything_reads_back(ha, written)
    finally:
        ha.fake.set_hang(False)
