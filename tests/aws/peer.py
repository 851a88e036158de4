"""Peer plugins on the AWS KMS wire protocol, for side-by-side tests and benchmarks.

Two kinds, both run as

    <peer> --listen <tmp>/peer.sock --key <arn> --region eu-west-2
        --kms-endpoint <kms_endpoint> --health-port 127.0.0.1:<free port>

- "aws-encryption-provider" (sigs.k8s.io/aws-encryption-provider, built by
  tests/aws/build-aws-encryption-provider.sh): the production plugin. The Go module proxy
  reachable here refuses that module at every version, so it cannot be built here.
- "stand-in" (the default; benches/peer, built by benches/peer/build.sh): our own Go
  plugin built like aws-encryption-provider on the upstream k8s.io/kms API types: one KMS
  call per Encrypt/Decrypt, no cache, the same ciphertext format, a v2 Status check at
  most every 30 s; its /metrics counts calls as `peer_kms_operations_total`.

`PeerPlugin(tmp, kms_endpoint, key_arn, kind=...).start()` builds the peer once (cached),

with the emulator's static credentials (and nothing else of ours) in its environment,
waits until the socket answers a v2 Status, and `stop()` ends it by PID. Its HTTP port
serves /healthz, /livez and Prometheus /metrics (`metrics_url`):
`aws_encryption_provider_kms_operations_total` and
`aws_encryption_provider_kms_operation_latency_ms` (labels key_arn, status, operation,
version). It serves KMS v1beta1 and v2 on the one socket, has no cache (one remote call per
Encrypt or Decrypt) and writes b'1' + the AWS CiphertextBlob. Its v2 Status costs an
Encrypt (and, in newer builds, a Decrypt) unless a check ran in the last 30 s: reset any
call counter after `start()`.

`binary()` raises PeerBuildError when Go cannot build the peer; tests skip on it.
`PeerPlugin(..., executable=path)` runs another binary that takes the same flags instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from ports import PortTaken, free_port, port_taken, retry_port_clash

from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint

from aws.emulator import CREDENTIALS, REGION

BUILD = Path(__file__).with_name("build-aws-encryption-provider.sh")
STANDIN_BUILD = Path(__file__).resolve().parents[2] / "benches" / "peer" / "build.sh"
KINDS = ("stand-in", "aws-encryption-provider")


class PeerBuildError(RuntimeError):
    """Go cannot build aws-encryption-provider here (no Go, or the module is not served)."""


def binary(kind: str = "aws-encryption-provider") -> Path:
    """The peer binary, built on first use and cached outside the work tree."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if shutil.which("go") is None:
        raise PeerBuildError(f"go is not installed: cannot build {kind}")
    script = STANDIN_BUILD if kind == "stand-in" else BUILD
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise PeerBuildError(f"{kind} did not build: {done.stderr.strip()[-400:]}")
    return Path(done.stdout.strip().splitlines()[-1])


async def _status(endpoint: Endpoint) -> str:
    async with KmsClient(endpoint, timeout=2.0) as client:
        return (await client.v2_status()).healthz


def _status_now(endpoint: Endpoint) -> str:
    """v2 Status healthz, from sync code even when an event loop runs in this thread."""
    result: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_status(endpoint)))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


class PeerPlugin:
    def __init__(
        self,
        tmp: Path,
        kms_endpoint: str,
        key_arn: str,
        *,
        extra_args: tuple[str, ...] = (),
        kind: str = "stand-in",
        executable: Path | None = None,
    ) -> None:
        self.tmp = tmp
        self.kind = kind
        self.executable = executable  # None: build the peer of this kind (binary(kind))
        self.kms_endpoint = kms_endpoint
        self.key_arn = key_arn
        self.extra_args = extra_args
        self.socket = tmp / "peer.sock"
        self.health_port = 0
        self.log = tmp / "peer.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(path=str(self.socket))

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.health_url}/metrics"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self, executable: Path) -> list[str]:
        return [
            str(executable),
            "--listen",
            str(self.socket),
            "--key",
            self.key_arn,
            "--region",
            REGION,
            "--kms-endpoint",
            self.kms_endpoint,
            "--health-port",
            f"127.0.0.1:{self.health_port}",
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        """Static credentials only: no shared config, no instance metadata, no proxies."""
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.tmp),
            **CREDENTIALS,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": str(self.tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.tmp / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 20.0) -> PeerPlugin:
        """Start on a health port picked free; again on another if it was taken meanwhile."""
        executable = self.executable or binary(self.kind)
        self.health_port = free_port()
        return retry_port_clash(lambda: self._start_once(executable, timeout), self._repick)

    def _repick(self) -> None:
        self.health_port = free_port()

    def _start_once(self, executable: Path, timeout: float) -> PeerPlugin:
        self.tmp.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command(executable), env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if port_taken(self.log.read_text()):
                    raise PortTaken(f"health port {self.health_port} taken")
                raise RuntimeError(f"{self.kind} exited: {self.log.read_text()[-800:]}")
            if self.socket.exists():
                try:
                    healthz = _status_now(self.endpoint)
                except Exception as exc:
                    last = repr(exc)
                else:
                    if healthz == "ok":
                        return self
                    last = f"healthz {healthz!r}"
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"{self.kind} did not answer Status in time ({last}): {self.log.read_text()[-800:]}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
