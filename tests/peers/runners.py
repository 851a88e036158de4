"""The real peer plugins as processes: built (cached), started on a socket, stopped by PID.

`peer_binary(name)` builds one of the five peers with build-peer.sh (from the pinned
sources in shared/peers, cached outside the tree) or raises PeerUnavailable saying
exactly why (the sources' path, or the build step that failed): tests skip on it.

One function per peer returns a `Daemon` with that peer's own flags and environment
(static credentials only, no proxies, no shared config: nothing of ours leaks in):

- `aws_encryption_provider(...)`: --listen, --key, --region, --kms-endpoint, --health-port;
- `ack_kms_plugin(...)`: --key-id, --path-to-unix-socket (+ --enable-kms-v1 for the v2
  build); ACK_KMS_REGION_ID, ACK_KMS_DOMAIN, ACCESS_KEY_ID/ACCESS_KEY_SECRET and
  SSL_CERT_FILE (the Alibaba fake's test CA: ack speaks HTTPS only);
- `vault_kubernetes_kms(...)`: -vault-address, -auth-method token, -transit-mount,
  -transit-key, -socket; the token in VAULT_KMS_TOKEN (its env twin, not on argv);
- `kmsplug_as_ack(...)`: kmsplug's `ack-kms-plugin` command with ack's argv and env.

`Daemon.start()` waits until the socket answers (v2 Status healthz "ok", or v1 Version for
a v1-only plugin); `stop()` sends SIGTERM to its own PID (then SIGKILL), never by name.
Ports a peer opens are read back from /proc (`listening_ports`), never guessed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kmsplug.client import check_health
from kmsplug.endpoint import Endpoint

BUILD = Path(__file__).with_name("build-peer.sh")
PEERS = (
    "aws-encryption-provider",
    "ack-kms-plugin",
    "ack-kms-plugin-v2",
    "vault-kubernetes-kms",
    "kubernetes-kms",
)
SOURCES_MISSING = 3  # build-peer.sh's exit code when shared/peers is not there


class PeerUnavailable(RuntimeError):
    """The peer cannot be had here; the message names the missing path or failed step."""


@functools.cache
def _build(name: str) -> tuple[Path | None, str]:
    """(binary, "") or (None, why): built once per process, failures remembered too."""
    try:
        done = subprocess.run(
            ["bash", str(BUILD), name], capture_output=True, text=True, timeout=1200, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"{BUILD} {name} did not finish in 20 minutes"
    if done.returncode == SOURCES_MISSING:
        return None, done.stderr.strip()
    if done.returncode != 0:
        return None, f"{name}: a build step was refused: {done.stderr.strip()[-1500:]}"
    return Path(done.stdout.strip().splitlines()[-1]), ""


def peer_binary(name: str) -> Path:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; one of {', '.join(PEERS)}")
    binary, why = _build(name)
    if binary is None:
        raise PeerUnavailable(why)
    return binary


def pinned_sources() -> dict[str, str]:
    """Each peer's pinned source as build.sh's header names it ("<repo> <commit> ...")."""
    done = subprocess.run(
        ["bash", str(BUILD), "--sources"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {}
    header = (Path(done.stdout.strip()) / "build.sh").read_text().splitlines()
    found = {}
    for line in header:
        words = line.lstrip("#").split()
        if len(words) >= 3 and words[0] in PEERS and "/" in words[1]:
            repo, commit = words[1].rstrip(","), words[2]
            pinned = all(c in "0123456789abcdef" for c in commit)
            found[words[0]] = f"{repo} {commit if pinned else '(newest source, file by file)'}"
    return found


def _health_now(endpoint: Endpoint, timeout: float) -> tuple[bool, str]:
    """check_health from sync code, even when this thread runs an event loop."""
    answer: list[tuple[bool, str]] = []

    def ask() -> None:
        try:
            answer.append(asyncio.run(check_health(endpoint, timeout)))
        except Exception as exc:  # not up yet: refused, no socket, deadline
            answer.append((False, type(exc).__name__))

    worker = threading.Thread(target=ask)
    worker.start()
    worker.join()
    return answer[0]


def listening_ports(pid: int) -> list[int]:
    """TCP ports process `pid` listens on (from /proc: no guessing, no race)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports))


def base_env(home: Path) -> dict[str, str]:
    """PATH and a private HOME: no proxies, no cloud profiles, nothing of the caller's."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


@dataclass
class Daemon:
    """A plugin process on a UNIX socket."""

    name: str
    argv: list[str]
    env: dict[str, str]
    socket: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(path=str(self.socket))

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60.0) -> Daemon:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        why = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            if self.socket.exists():
                healthy, why = _health_now(self.endpoint, 5.0)
                if healthy:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer healthy in {timeout} s ({why}):\n{self.log()[-3000:]}"
        )

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM to our own PID, SIGKILL if it lingers; the exit code (None if not run)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def ports(self) -> list[int]:
        return listening_ports(self.pid)


# -- the peers -----------------------------------------------------------------------------


def aws_encryption_provider(
    workdir: Path,
    socket: Path,
    *,
    kms_endpoint: str,
    key: str,
    region: str,
    credentials: dict[str, str],
    extra_args: tuple[str, ...] = (),
) -> Daemon:
    """kubernetes-sigs/aws-encryption-provider on `socket` (v1beta1 and v2 together)."""
    argv = [
        str(peer_binary("aws-encryption-provider")),
        *("--listen", str(socket), "--key", key, "--region", region),
        *("--kms-endpoint", kms_endpoint, "--health-port", "127.0.0.1:0"),
        *extra_args,
    ]
    env = {
        **base_env(workdir),
        **credentials,
        "AWS_REGION": region,
        "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return Daemon("aws-encryption-provider", argv, env, socket, workdir / "aws-peer.log")


@dataclass(frozen=True)
class AckSetup:
    """What an ack-kms-plugin deployment is configured with (flags and environment)."""

    key_id: str
    region: str
    domain: str  # ACK_KMS_DOMAIN: host[:port]
    access_key_id: str
    access_key_secret: str
    ca_file: Path  # SSL_CERT_FILE: the CA of the KMS endpoint's certificate

    def argv(self, socket: Path) -> list[str]:
        return ["--key-id", self.key_id, "--path-to-unix-socket", str(socket)]

    def env(self, home: Path) -> dict[str, str]:
        return {
            **base_env(home),
            "ACK_KMS_REGION_ID": self.region,
            "ACK_KMS_DOMAIN": self.domain,
            "ACCESS_KEY_ID": self.access_key_id,
            "ACCESS_KEY_SECRET": self.access_key_secret,
            "SSL_CERT_FILE": str(self.ca_file),
        }


def ack_kms_plugin(
    workdir: Path, socket: Path, setup: AckSetup, *, v2: bool = False, enable_v1: bool = False
) -> Daemon:
    """AliyunContainerService/ack-kms-plugin: the 2020 build (v1beta1 only) or, with `v2`,
    the newest source (KMS v2; v1beta1 too with `enable_v1`)."""
    name = "ack-kms-plugin-v2" if v2 else "ack-kms-plugin"
    if enable_v1 and not v2:
        raise ValueError("--enable-kms-v1 exists only in the v2 build")
    argv = [
        str(peer_binary(name)),
        *setup.argv(socket),
        *(["--enable-kms-v1"] if enable_v1 else []),
    ]
    return Daemon(name, argv, setup.env(workdir), socket, workdir / f"{name}.log")


def kmsplug_as_ack(
    workdir: Path, socket: Path, setup: AckSetup, *extra_args: str, enable_v1: bool = False
) -> Daemon:
    """kmsplug's `ack-kms-plugin` command with the peer's own flags and environment.

    Only the port of kmsplug's own HTTP endpoint is added (KMSPLUG_HTTP_ADDRESS): its
    default port could be taken by another test on this machine.
    """
    script = Path(sys.executable).with_name("ack-kms-plugin")
    v1 = ["--enable-kms-v1"] if enable_v1 else []
    argv = [str(script), *setup.argv(socket), *v1, *extra_args]
    env = {**setup.env(workdir), "KMSPLUG_HTTP_ADDRESS": "127.0.0.1:0"}
    return Daemon("kmsplug ack-kms-plugin", argv, env, socket, workdir / "kmsplug-ack.log")


def vault_kubernetes_kms(
    workdir: Path,
    socket: Path,
    *,
    address: str,
    token: str,
    transit_key: str,
    transit_mount: str = "transit",
    extra_args: tuple[str, ...] = (),
) -> Daemon:
    """FalcoSuessgott/vault-kubernetes-kms (v1 and v2) with token auth."""
    argv = [
        str(peer_binary("vault-kubernetes-kms")),
        *("-vault-address", address, "-auth-method", "token"),
        *("-transit-mount", transit_mount, "-transit-key", transit_key),
        *("-socket", f"unix://{socket}", "-health-port", "0"),
        *extra_args,
    ]
    env = {**base_env(workdir), "VAULT_KMS_TOKEN": token}
    return Daemon("vault-kubernetes-kms", argv, env, socket, workdir / "vault-peer.log")


def kmsplug_serve(
    workdir: Path, socket: Path, *args: str, env: dict[str, str] | None = None
) -> Daemon:
    """`kmsplug serve` on `socket` with `args` (e.g. --provider aws ...) and `env` added to
    this process's environment (provider secrets: VAULT_TOKEN, AWS_*)."""
    argv = [
        *(sys.executable, "-m", "kmsplug", "serve", "--socket", f"unix://{socket}"),
        *("--key-file", str(workdir / "local.key"), "--http-address", "127.0.0.1:0"),
        *args,
    ]
    return Daemon("kmsplug", argv, {**os.environ, **(env or {})}, socket, workdir / "kmsplug.log")
