"""A real kube-apiserver and a real etcd on loopback, for end-to-end tests of kmsplug.

`ClusterBed(workdir).start(encryption_config)` brings up the pinned etcd (v3.6, built by
build-etcd.sh) and the pinned kube-apiserver (built by build-apiserver.sh), both from Go
modules into a cache outside the tree, writes a kubeconfig, and waits for /readyz.
Processes are ended by their own PIDs.

Developers: `make cluster` (with `make run` serving in another terminal) or
`python tests/e2e/bed.py ENCRYPTION_CONFIG` brings a bed up and waits; the apiserver is
ready only once the KMS plugin in the config answers.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1] / "python"), str(HERE.parent)]

from pki import EtcdPki, make_etcd_pki  # noqa: E402
from ports import PortTaken, free_port, port_taken, retry_port_clash  # noqa: E402

from kmsplug.cluster.etcd import EtcdReader, EtcdTls  # noqa: E402


def apiserver_binary() -> Path:
    """The cached kube-apiserver, built on first use."""
    out = subprocess.run(
        [str(HERE / "build-apiserver.sh")], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


@functools.cache
def etcd_binary() -> Path:
    """The cached etcd (pinned in etcd/go.mod), built on first use."""
    script = HERE / "build-etcd.sh"
    out = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    binary = Path(lines[-1]) if out.returncode == 0 and lines else None
    if binary is None or not os.access(binary, os.X_OK):
        raise RuntimeError(
            f"etcd not available: {script} (exit {out.returncode}) builds it from Go modules"
            " into $KMSPLUG_CACHE or ~/.cache/kmsplug; run it by hand to see why it failed:\n"
            + out.stderr
        )
    return binary


def log_tail(path: Path, lines: int = 50) -> str:
    """The last `lines` lines of a log file ('' if there is none)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def service_account_keys(directory: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "sa.key"
    public = directory / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def write_kubeconfig(path: Path, server_url: str, ca_file: Path, token: str) -> Path:
    """A kubeconfig for `server_url` as admin (a bearer token), trusting `ca_file`."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "bed",
                        "cluster": {"server": server_url, "certificate-authority": str(ca_file)},
                    }
                ],
                "users": [{"name": "admin", "user": {"token": token}}],
                "contexts": [{"name": "bed", "context": {"cluster": "bed", "user": "admin"}}],
                "current-context": "bed",
            }
        )
    )
    return path


def apiserver_args(
    *,
    port: int,
    cert_dir: Path,
    credentials: Path,
    etcd_flags: list[str],
    encryption_config: Path,
    feature_gates: tuple[str, ...] = (),
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """kube-apiserver's command line on loopback; `credentials` holds tokens.csv, sa.key
    and sa.pub (apiservers of one cluster share them)."""
    args = [
        str(apiserver_binary()),
        *etcd_flags,
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",  # loopback addresses are refused otherwise
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        f"--token-auth-file={credentials / 'tokens.csv'}",
        "--authorization-mode=AlwaysAllow",
        f"--service-account-key-file={credentials / 'sa.pub'}",
        f"--service-account-signing-key-file={credentials / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.96.0.0/24",
        f"--encryption-provider-config={encryption_config}",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--v=1",
        *extra_args,
    ]
    if feature_gates:
        args.append("--feature-gates=" + ",".join(feature_gates))
    return args


def https_get(url: str, token: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET an apiserver URL as admin; (status, body), status 0 if unreachable."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(  # noqa: S310 - loopback test apiserver
        url, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float, pause: float
) -> bool:
    """Poll `ready` until it holds while `proc` runs (True: not another server that took
    its port), or until the process exits or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready() and proc.poll() is None:
            return True
        time.sleep(pause)
    return False


def etcd_answers(url: str, tls: EtcdTls | None) -> bool:
    """Whether etcd at `url` serves reads (it does once it has a leader)."""
    try:
        EtcdReader(url, tls=tls, timeout=1).get(b"/bed-start-probe")
    except (OSError, ValueError):
        return False
    return True


def start_logged(args: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start `args` with stdout and stderr appended to `log_path`; the process and where
    its output begins in the log."""
    log_start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT), log_start


def said_port_taken(log_path: Path, log_start: int) -> bool:
    """Whether the process logging from `log_start` on could not bind its port."""
    return port_taken(log_path.read_bytes()[log_start:].decode(errors="replace"))


@dataclass
class ClusterBed:
    workdir: Path
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd: subprocess.Popen[bytes] | None = None
    apiserver: subprocess.Popen[bytes] | None = None
    encryption_config: Path | None = None
    feature_gates: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    etcd_pki: EtcdPki | None = None
    """Set by start(etcd_tls=True): etcd serves TLS and wants client certificates."""

    @property
    def etcd_url(self) -> str:
        scheme = "https" if self.etcd_pki else "http"
        return f"{scheme}://127.0.0.1:{self.etcd_port}"

    @property
    def etcd_tls(self) -> EtcdTls | None:
        """CA, client certificate and key for etcd (None when it speaks plain HTTP)."""
        pki = self.etcd_pki
        if pki is None:
            return None
        return EtcdTls(str(pki.ca), str(pki.client_cert), str(pki.client_key))

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    # -- lifecycle -------------------------------------------------------------------

    def start(
        self,
        encryption_config: Path,
        *,
        feature_gates: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        etcd_tls: bool = False,
        timeout: float = 120.0,
    ) -> ClusterBed:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if etcd_tls:
            self.etcd_pki = make_etcd_pki(self.workdir / "etcd-pki")
        self.encryption_config = encryption_config
        self.feature_gates = feature_gates
        self.extra_args = extra_args
        try:
            retry_port_clash(self._start_etcd, self._new_etcd_ports)
            self._write_credentials()
            self.start_apiserver(timeout=timeout)
        except BaseException:  # Ctrl-C or a failed start: leave no process behind
            self.stop()
            raise
        return self

    def _new_etcd_ports(self) -> None:
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        # the failed start may have written its member (with the old peer URL) already
        shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)

    def _start_etcd(self) -> None:
        etcd = str(etcd_binary())
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        log_path = self.workdir / "etcd.log"
        self.etcd, log_start = start_logged(
            [
                etcd,
                "--name=bed",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=bed={peer}",
                "--log-level=warn",
                *self._etcd_tls_flags(),
            ],
            log_path,
        )
        if wait_until(lambda: etcd_answers(self.etcd_url, self.etcd_tls), self.etcd, 30, 0.1):
            return
        end_process(self.etcd)
        self.etcd = None
        if said_port_taken(log_path, log_start):
            raise PortTaken(f"etcd's ports {self.etcd_port}/{self.etcd_peer_port} were taken")
        raise RuntimeError(f"etcd did not start:\n{log_tail(log_path)}")

    def _etcd_tls_flags(self) -> list[str]:
        pki = self.etcd_pki
        if pki is None:
            return []
        return [
            f"--cert-file={pki.server_cert}",
            f"--key-file={pki.server_key}",
            f"--trusted-ca-file={pki.ca}",
            "--client-cert-auth",
        ]

    def _apiserver_etcd_flags(self) -> list[str]:
        pki = self.etcd_pki
        if pki is None:
            return [f"--etcd-servers={self.etcd_url}"]
        return [
            f"--etcd-servers={self.etcd_url}",
            f"--etcd-cafile={pki.ca}",
            f"--etcd-certfile={pki.client_cert}",
            f"--etcd-keyfile={pki.client_key}",
        ]

    def _write_credentials(self) -> None:
        (self.workdir / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        service_account_keys(self.workdir)
        self._write_kubeconfig()

    def _write_kubeconfig(self) -> None:
        # the apiserver writes its self-signed certificate (its own CA) into certs/ at start
        write_kubeconfig(
            self.kubeconfig, self.server_url, self.workdir / "certs" / "apiserver.crt", self.token
        )

    def start_apiserver(self, timeout: float = 120.0) -> None:
        """Start kube-apiserver; on a port another process took meanwhile (a restart keeps
        its port), again on a new one, with the kubeconfig rewritten."""
        retry_port_clash(lambda: self._start_apiserver_once(timeout), self._new_apiserver_port)

    def _new_apiserver_port(self) -> None:
        self.apiserver_port = free_port()
        self._write_kubeconfig()

    def _start_apiserver_once(self, timeout: float) -> None:
        assert self.encryption_config is not None
        args = apiserver_args(
            port=self.apiserver_port,
            cert_dir=self.workdir / "certs",
            credentials=self.workdir,
            etcd_flags=self._apiserver_etcd_flags(),
            encryption_config=self.encryption_config,
            feature_gates=self.feature_gates,
            extra_args=self.extra_args,
        )
        log_path = self.workdir / "apiserver.log"
        self.apiserver, log_start = start_logged(args, log_path)
        try:
            if wait_until(lambda: self.get("/readyz")[0] == 200, self.apiserver, timeout, 0.25):
                return
        except BaseException:
            self.stop_apiserver()
            raise
        self.stop_apiserver()
        if said_port_taken(log_path, log_start):
            raise PortTaken(f"the apiserver's port {self.apiserver_port} was taken")
        raise RuntimeError(f"kube-apiserver did not get ready:\n{log_tail(log_path)}")

    def stop_apiserver(self) -> None:
        end_process(self.apiserver)
        self.apiserver = None

    def restart_apiserver(self, encryption_config: Path | None = None) -> None:
        self.stop_apiserver()
        if encryption_config is not None:
            self.encryption_config = encryption_config
        self.start_apiserver()

    def stop(self) -> None:
        self.stop_apiserver()
        end_process(self.etcd)
        self.etcd = None

    # -- clients ---------------------------------------------------------------------

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET an apiserver path as admin; (status, body), status 0 if unreachable."""
        return https_get(self.server_url + path, self.token, timeout)

    def core(self) -> Any:
        """A CoreV1Api client (the official Python client) for this apiserver."""
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(config_file=str(self.kubeconfig)))

    def etcd_reader(self) -> EtcdReader:
        return EtcdReader(self.etcd_url, tls=self.etcd_tls)

    def raw(self, key: str) -> bytes:
        value = self.etcd_reader().get(key.encode())
        if value is None:
            raise KeyError(key)
        return value


def end_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 20 s; nothing if it is not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main() -> None:
    config = Path(sys.argv[1]).resolve()
    gates = tuple(g for g in os.environ.get("FEATURE_GATES", "KMSv1=true").split(",") if g)
    workdir = Path(tempfile.mkdtemp(prefix="kmsplug-bed-"))
    bed = ClusterBed(workdir).start(config, feature_gates=gates)
    print(f"kube-apiserver ready at {bed.server_url}; etcd at {bed.etcd_url}")
    print(f"export KUBECONFIG={bed.kubeconfig}")
    print("Ctrl-C stops both.")
    stop = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # delivered to sigwait, not fatal
    try:
        signal.sigwait(stop)
    finally:
        bed.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
