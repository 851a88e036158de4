"""A private containerd (Debian's 1.6) with its CRI plugin, for a real kubelet to drive.

Everything lives under one work directory: its own socket, root, state and an empty CNI
config directory, so it never touches a containerd the machine may run. It is started
and stopped by its own PID; stop() first removes every pod sandbox it ran, since the
runc shims outlive containerd by design.

The settings a sandbox like this one needs (see docs/operations.md, "A node without a
registry"): the pause image is a local one (no registry to pull registry.k8s.io/pause
from) and `restrict_oom_score_adj`, because root here lacks CAP_SYS_RESOURCE and cannot
lower a container's oom_score_adj below its own, as the kubelet asks for critical pods.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAUSE_IMAGE = "localhost/kmsplug-pause:catatonit"


def _config(root: Path, socket: Path, pause_image: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{root / "root"}"
state = "{root / "state"}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[{cri}]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{root / "cni"}"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
"""


@dataclass
class Containerd:
    workdir: Path
    crictl_binary: Path
    pause_image: str = PAUSE_IMAGE
    proc: subprocess.Popen[bytes] | None = None
    imported: set[str] = field(default_factory=set)

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "containerd.log"

    def start(self, timeout: float = 60.0) -> Containerd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "cni").mkdir(exist_ok=True)  # empty: host-network pods only
        config = self.workdir / "containerd.toml"
        config.write_text(_config(self.workdir, self.socket, self.pause_image))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"containerd did not start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- clients ---------------------------------------------------------------------

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args], check, timeout
        )

    def crictl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        endpoint = ["--runtime-endpoint", self.endpoint, "--image-endpoint", self.endpoint]
        return _run([str(self.crictl_binary), *endpoint, "--timeout", "30s", *args], check, timeout)

    def import_archive(self, archive: Path) -> None:
        """Import an OCI archive (from `podman save --format oci-archive`)."""
        self.ctr("images", "import", str(archive))

    def containers(self, name: str | None = None) -> list[dict[str, Any]]:
        """Containers as CRI lists them (running and exited), newest first."""
        args = ["ps", "--all", "--output", "json"]
        if name:
            args += ["--name", f"^{name}$"]
        listed: list[dict[str, Any]] = json.loads(self.crictl(*args).stdout)["containers"]
        return sorted(listed, key=lambda c: int(c["createdAt"]), reverse=True)

    def container_pid(self, container_id: str) -> int:
        """The host PID of a container's first process."""
        info = json.loads(self.crictl("inspect", "--output", "json", container_id).stdout)
        return int(info["info"]["pid"])

    # -- teardown --------------------------------------------------------------------

    def remove_all_pods(self) -> None:
        """Stop and remove every pod sandbox (and so every container and shim) it ran."""
        if self.proc is None or self.proc.poll() is not None:
            return
        listed = self.crictl("pods", "--quiet", check=False, timeout=120)
        for pod in listed.stdout.split():
            self.crictl("stopp", pod, check=False, timeout=120)
            self.crictl("rmp", "--force", pod, check=False, timeout=120)

    def stop(self) -> None:
        try:
            self.remove_all_pods()
        finally:
            proc, self.proc = self.proc, None
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            _unmount_below(self.workdir)


def _run(command: list[str], check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def _unmount_below(directory: Path) -> None:
    """Unmount what containerd left mounted under its work directory (overlay rootfs)."""
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(directory) + "/")
    ]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mountpoint], check=False, capture_output=True)


def remove_workdir(directory: Path) -> None:
    _unmount_below(directory)
    shutil.rmtree(directory, ignore_errors=True)
