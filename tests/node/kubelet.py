"""A real kubelet (v1.34, built from Go modules) on the private containerd, running the
static pods it finds in its manifest directory, the way a control-plane node does.

The settings are those this kind of machine needs, each for a reason (see
docs/operations.md, "A node without a registry"): cgroup v1 without systemd as PID 1
(cgroupfs driver, failCgroupV1 false), no CAP_SYS_RESOURCE (oomScoreAdj 0), everything
on loopback and under its own directories (root dir, pod logs, cgroup root), no server
ports it does not need, no image garbage collection or disk eviction (the images are
local and cannot be pulled again).

The kubelet runs in a mount namespace of its own (unshare) where two things it would
otherwise change on the host are files of ours: the kernel settings it insists on
(vm.overcommit_memory=1, kernel.panic_on_oops=1, ...: it writes them unless they already
read so, and they are global) and /var/log/containers (it links every container's log
there). Its static pods mount only hostPaths, which need no kubelet-made mounts, so the
private namespace changes nothing they see.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "kmsplug-node"
# what the kubelet (pkg/kubelet/cm setupKernelTunables) wants these to read
KERNEL_SETTINGS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# in the kubelet's namespace: bind each "source target" pair, then exec the kubelet
_PRIVATE_MOUNTS = """
set -e
while read -r source target; do
  [ -e "$target" ] || mkdir -p "$target"
  mount --bind "$source" "$target"
done <"$0"
exec "$@"
"""
CGROUP_ROOT = "/kmsplug-node"  # not /kubepods: never shares cgroups with another kubelet


def kubelet_config(workdir: Path, runtime_endpoint: str, healthz_port: int) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "staticPodPath": str(workdir / "manifests"),
        "fileCheckFrequency": "2s",  # pick up manifest changes quickly
        "containerRuntimeEndpoint": runtime_endpoint,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": CGROUP_ROOT,
        "failCgroupV1": False,
        "failSwapOn": False,
        "oomScoreAdj": 0,
        "enableServer": False,
        "readOnlyPort": 0,
        "address": "127.0.0.1",
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "podLogsDir": str(workdir / "pod-logs"),
        "makeIPTablesUtilChains": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "0%",
            "imagefs.available": "0%",
        },
        "registerNode": True,
        "nodeStatusUpdateFrequency": "10s",
    }


@dataclass
class Kubelet:
    workdir: Path
    binary: Path
    runtime_endpoint: str
    kubeconfig: Path
    healthz_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def manifests(self) -> Path:
        return self.workdir / "manifests"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kubelet.log"

    def start(self, timeout: float = 120.0) -> Kubelet:
        self.manifests.mkdir(parents=True, exist_ok=True)
        (self.workdir / "pod-logs").mkdir(exist_ok=True)
        config = self.workdir / "kubelet.json"
        config.write_text(
            json.dumps(kubelet_config(self.workdir, self.runtime_endpoint, self.healthz_port))
        )
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *self._private_mount_namespace(),
                str(self.binary),
                f"--config={config}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={self.workdir / 'root'}",
                f"--cert-dir={self.workdir / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                "--v=2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"kubelet did not get healthy:\n{self.log_tail()}")

    def _private_mount_namespace(self) -> list[str]:
        """unshare + a shell that binds our files over the host's, then execs the kubelet
        (same PID: signals sent to it reach the kubelet)."""
        private = self.workdir / "private"
        pairs = []
        for name, value in KERNEL_SETTINGS.items():
            source = private / name.replace("/", ".")
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_text(value + "\n")
            pairs.append(f"{source} /proc/sys/{name}")
        container_logs = private / "container-logs"
        container_logs.mkdir(exist_ok=True)
        pairs.append(f"{container_logs} /var/log/containers")
        mounts = private / "mounts"
        mounts.write_text("\n".join(pairs) + "\n")
        return ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c",
                _PRIVATE_MOUNTS, str(mounts)]  # fmt: skip

    def healthy(self) -> bool:
        import urllib.request

        try:
            url = f"http://127.0.0.1:{self.healthz_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
