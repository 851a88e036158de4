"""A real control-plane node: a kubelet (v1.34) on containerd + runc runs etcd,
kube-apiserver and kmsplug (deploy/static-pod.yaml) as static pods; the apiserver pod
stores Secrets through the kmsplug pod over the shared hostPath socket.

These tests share one node (a session fixture) and run in file order: the last ones
kill and freeze kmsplug's container.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from node import ControlPlaneNode

from kmsplug._proto.v2.encrypted_object_pb2 import EncryptedObject
from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint
from kmsplug.sockets import is_live

pytestmark = [pytest.mark.node, pytest.mark.timeout(900)]  # node start-up counts

PLUGIN_UID = 65532
V2_PREFIX = b"k8s:enc:kms:v2:kmsplug:"
MIRROR = "kmsplug-kmsplug-node"  # the kubelet's mirror pod: <name>-<node name>


def _secret(node: ControlPlaneNode, name: str, value: str) -> None:
    node.core().create_namespaced_secret(
        "kube-system", {"metadata": {"name": name}, "stringData": {"v": value}}
    )


def _read(node: ControlPlaneNode, name: str) -> str:
    data = node.core().read_namespaced_secret(name, "kube-system").data
    return base64.b64decode(data["v"]).decode()


def _running_kmsplug(node: ControlPlaneNode) -> dict[str, Any] | None:
    assert node.containerd is not None
    for container in node.containerd.containers("kmsplug"):
        if container["state"] == "CONTAINER_RUNNING":
            return container
    return None


def _wait(what: str, check: Any, node: ControlPlaneNode, timeout: float = 240.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}:\n{node.diagnose()}")


def _mirror_pod(node: ControlPlaneNode) -> Any:
    return node.core().read_namespaced_pod(MIRROR, "kube-system")


def _ready(node: ControlPlaneNode) -> bool:
    conditions = _mirror_pod(node).status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _restarts(node: ControlPlaneNode) -> int:
    statuses = _mirror_pod(node).status.container_statuses or []
    return int(statuses[0].restart_count) if statuses else 0


def _plugin_pid(node: ControlPlaneNode) -> int:
    """kmsplug's own process: the child of the container's PID 1 (tini)."""
    container = _running_kmsplug(node)
    assert container is not None
    assert node.containerd is not None
    init = node.containerd.container_pid(container["id"])
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _decrypt_stored_dek(node: ControlPlaneNode, name: str) -> bytes:
    """Ask the plugin on the hostPath socket to decrypt the DEK a Secret is stored under."""
    stored = node.raw(f"/registry/secrets/kube-system/{name}")
    assert stored.startswith(V2_PREFIX)
    envelope = EncryptedObject.FromString(stored[len(V2_PREFIX) :])

    async def decrypt() -> bytes:
        socket = Endpoint(path=str(node.socket_dir / "socket.sock"))
        async with KmsClient(socket, timeout=10) as client:
            return await client.v2_decrypt(
                envelope.encryptedDEKSource, envelope.keyID, dict(envelope.annotations)
            )

    return anyio.run(decrypt)


def test_apiserver_pod_stores_secrets_through_the_kmsplug_pod(node: ControlPlaneNode) -> None:
    _secret(node, "first", "stored through the static pod")
    assert node.raw("/registry/secrets/kube-system/first").startswith(V2_PREFIX)
    assert _read(node, "first") == "stored through the static pod"
    assert len(_decrypt_stored_dek(node, "first")) >= 32


def test_kmsplug_runs_as_its_user_with_the_documented_permissions(
    node: ControlPlaneNode,
) -> None:
    uids = Path(f"/proc/{_plugin_pid(node)}/status").read_text().split("Uid:")[1].split()[:4]
    assert uids == [str(PLUGIN_UID)] * 4
    socket = node.socket_dir / "socket.sock"
    assert (socket.stat().st_uid, socket.stat().st_mode & 0o777) == (PLUGIN_UID, 0o600)
    assert node.socket_dir.stat().st_uid == PLUGIN_UID
    key_dir = node.key_dir.stat()
    assert (key_dir.st_uid, key_dir.st_mode & 0o777) == (PLUGIN_UID, 0o700)
    key = (node.key_dir / "local.key").stat()
    assert key.st_uid == PLUGIN_UID and key.st_mode & 0o077 == 0
    audit = node.audit_dir / "audit.jsonl"
    _wait("the audit log", audit.exists, node, timeout=30)
    assert audit.stat().st_uid == PLUGIN_UID


def test_probes_report_ready_and_liveness_exec_passes(node: ControlPlaneNode) -> None:
    _wait("the kmsplug mirror pod to be Ready", lambda: _ready(node), node)
    status = _mirror_pod(node).status.container_statuses[0]
    assert status.ready and status.restart_count == 0
    container = _running_kmsplug(node)
    assert container is not None and node.containerd is not None
    probe = _mirror_pod(node).spec.containers[0].liveness_probe._exec.command
    # the probe's own command, run where the kubelet runs it
    result = node.containerd.crictl("exec", container["id"], *probe, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_killed_kmsplug_is_restarted_while_the_apiserver_keeps_serving_reads(
    node: ControlPlaneNode,
) -> None:
    _secret(node, "before-kill", "written before the kill")
    before = _running_kmsplug(node)
    assert before is not None and node.containerd is not None and node.kubelet is not None
    assert node.kubelet.proc is not None
    socket = Endpoint(path=str(node.socket_dir / "socket.sock"))
    # Hold the kubelet still so the plugin is certainly down while we read.
    node.kubelet.proc.send_signal(signal.SIGSTOP)
    try:
        os.kill(node.containerd.container_pid(before["id"]), signal.SIGKILL)
        _wait("the plugin's socket to die", lambda: not is_live(socket), node, timeout=30)
        for _ in range(3):
            assert _read(node, "before-kill") == "written before the kill"
            assert _read(node, "first") == "stored through the static pod"
    finally:
        node.kubelet.proc.send_signal(signal.SIGCONT)

    after = _wait(
        "the kubelet to restart kmsplug",
        lambda: (c := _running_kmsplug(node)) and c["id"] != before["id"] and is_live(socket) and c,
        node,
    )
    assert after["metadata"]["attempt"] > before["metadata"]["attempt"]
    # the new process decrypts what the old one encrypted: same key, kept on the hostPath
    assert len(_decrypt_stored_dek(node, "before-kill")) >= 32
    _secret(node, "after-restart", "written after the restart")
    assert node.raw("/registry/secrets/kube-system/after-restart").startswith(V2_PREFIX)
    _wait(
        "the mirror pod to count the restart",
        lambda: _restarts(node) >= 1,
        node,
    )


def test_frozen_kmsplug_turns_unready_then_liveness_restarts_it(node: ControlPlaneNode) -> None:
    _wait("kmsplug to be Ready again", lambda: _ready(node), node)
    restarts = _restarts(node)
    frozen = _running_kmsplug(node)
    assert frozen is not None
    os.kill(_plugin_pid(node), signal.SIGSTOP)  # alive but answering nothing
    _wait("readiness to fail", lambda: not _ready(node), node)
    _wait(
        "the liveness probe to restart it",
        lambda: _restarts(node) > restarts,
        node,
    )
    events = node.core().list_namespaced_event(
        "kube-system", field_selector=f"involvedObject.name={MIRROR}"
    )
    reasons = {(e.reason, e.message.split(":")[0]) for e in events.items}
    assert ("Unhealthy", "Liveness probe failed") in reasons, reasons
    _wait("kmsplug to be Ready after the restart", lambda: _ready(node), node)
    _secret(node, "after-freeze", "written after the liveness restart")
    assert _read(node, "after-freeze") == "written after the liveness restart"
