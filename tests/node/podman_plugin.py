"""kmsplug's image run under podman the way an operator would: host directories for the
socket and the key, the plugin's own user (65532) owning them, host network for the
loopback /metrics and /readyz."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from images import podman

from kmsplug.endpoint import Endpoint
from kmsplug.sockets import is_live

PLUGIN_UID = 65532  # the image's user, as deploy/static-pod.yaml runs it
SOCKET = "/var/run/kmsplugin/socket.sock"  # inside the container, as deploy/ has it


@dataclass
class PodmanPlugin:
    image: str
    host_dir: Path
    args: tuple[str, ...] = ()
    name: str = field(default_factory=lambda: f"kmsplug-test-{secrets.token_hex(4)}")
    started_in: float = 0.0
    """Seconds from `podman run` to the socket answering."""

    @property
    def socket_dir(self) -> Path:
        return self.host_dir / "kmsplugin"

    @property
    def key_dir(self) -> Path:
        return self.host_dir / "keys"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(path=str(self.socket_dir / "socket.sock"))

    def prepare_dirs(self) -> None:
        """What the static pod's init container does: hand the dirs to the plugin's user."""
        for directory, mode in ((self.socket_dir, 0o750), (self.key_dir, 0o700)):
            directory.mkdir(exist_ok=True)
            directory.chmod(mode)
            os.chown(directory, PLUGIN_UID, PLUGIN_UID)

    def run(self, timeout: float = 60.0) -> PodmanPlugin:
        self.prepare_dirs()
        begin = time.monotonic()
        podman(
            "run", "--detach", "--name", self.name, "--network", "host",
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--volume", f"{self.socket_dir}:/var/run/kmsplugin",
            "--volume", f"{self.key_dir}:/var/lib/kmsplug",
            self.image,
            "serve", f"--socket=unix://{SOCKET}", "--key-file=/var/lib/kmsplug/local.key",
            "--http-address=127.0.0.1:0", *self.args,
        )  # fmt: skip
        deadline = begin + timeout
        while time.monotonic() < deadline:
            if is_live(self.endpoint) and "serving on" in self.logs():
                self.started_in = time.monotonic() - begin
                return self
            if self.state() not in ("running", "created", "configured"):
                break
            time.sleep(0.05)
        raise RuntimeError(f"kmsplug did not start in podman ({self.state()}):\n{self.logs()}")

    def state(self) -> str:
        out = podman("inspect", "--format", "{{.State.Status}}", self.name, check=False)
        return out.stdout.strip() or "absent"

    def exit_code(self) -> int:
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout)

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def exec(self, *command: str, timeout: float = 60) -> tuple[int, str]:
        out = podman("exec", self.name, *command, check=False, timeout=timeout)
        return out.returncode, out.stdout + out.stderr

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)
