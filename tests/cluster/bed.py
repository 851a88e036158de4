"""A real kube-apiserver and a real etcd on loopback, for tests and for developers.

`ClusterBed` starts etcd (Debian's `etcd-server`, see install-etcd.sh) and the pinned
kube-apiserver (see build-apiserver.sh) on free 127.0.0.1 ports, in a temporary directory
that holds their data, certificates, keys, logs and a kubeconfig for kubectl. It stops only
the processes it started, by PID, and removes that directory.

As a developer command (Ctrl-C stops the bed)::

    python -m tests.cluster.bed --config encryption.yaml [--feature-gate KMSv1=true]

Only the standard library and PyYAML are used, so this file also runs as a plain script.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

import yaml

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-apiserver.sh"
APISERVER_GO_MOD = HERE / "apiserver" / "go.mod"

# Environment variables that must not reach the children: they only talk to loopback, and
# an inherited proxy or ETCD_* setting would silently change what they do.
_DROPPED_ENV_PREFIXES = ("ETCD_", "ETCDCTL_", "KUBECONFIG")
_DROPPED_ENV = {"http_proxy", "https_proxy", "all_proxy", "grpc_proxy"}

LOG_TAIL_LINES = 50
ADMIN_USER = "kmsplug-admin"


class BedError(RuntimeError):
    """The bed could not start, or a command against it failed."""


def cache_dir() -> Path:
    """Where build-apiserver.sh keeps binaries: outside the work tree, keyed by version."""
    return Path(os.environ.get("KMSPLUG_CACHE", str(Path.home() / ".cache" / "kmsplug")))


def pinned_kubernetes_version() -> str:
    """The k8s.io/kubernetes version that apiserver/go.mod requires, such as v1.37.2."""
    for line in APISERVER_GO_MOD.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "require" and fields[1] == "k8s.io/kubernetes":
            return fields[2]
    raise BedError(f"no 'require k8s.io/kubernetes vX.Y.Z' line in {APISERVER_GO_MOD}")


def apiserver_binary(*, build: bool = False) -> Path:
    """The cached kube-apiserver: $KMSPLUG_KUBE_APISERVER, else the build script's cache.

    With build=True a missing binary is built (minutes on a cold cache); without, it is an
    error that says how to build it.
    """
    override = os.environ.get("KMSPLUG_KUBE_APISERVER")
    if override:
        path = Path(override)
    else:
        path = cache_dir() / f"kube-apiserver-{pinned_kubernetes_version()}" / "kube-apiserver"
    if os.access(path, os.X_OK):
        return path
    if build and not override:
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
        )
        return Path(out.stdout.strip().splitlines()[-1])
    raise BedError(f"kube-apiserver not found at {path}: run {BUILD_SCRIPT} (cached once built)")


def etcd_binary() -> Path:
    """etcd: $KMSPLUG_ETCD, else `etcd` on PATH (install-etcd.sh installs Debian's)."""
    override = os.environ.get("KMSPLUG_ETCD")
    found = override or shutil.which("etcd")
    if not found or not os.access(found, os.X_OK):
        raise BedError(f"etcd not found ({found or 'not on PATH'}): run {HERE / 'install-etcd.sh'}")
    return Path(found)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """This process's environment without proxies and etcd/kube client settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in _DROPPED_ENV and not key.startswith(_DROPPED_ENV_PREFIXES)
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _prefix_end(prefix: bytes) -> bytes:
    """The etcd range_end that selects every key starting with prefix."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # an empty or all-0xff prefix: every key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Process:
    """One child process we started, with its log file; stopped by its PID only."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop them
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; reaps the child."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


class ClusterBed:
    """etcd + kube-apiserver on 127.0.0.1 with a given EncryptionConfiguration.

    Typical use::

        bed = ClusterBed().start(Path("enc.yaml"), feature_gates=["KMSv1=true"])
        try:
            bed.kubectl("create", "secret", "generic", "s1", "--from-literal=k=v")
            raw = bed.etcd_get_raw("/registry/secrets/default/s1")
        finally:
            bed.stop()
    """

    def __init__(
        self,
        *,
        apiserver: Path | None = None,
        etcd: Path | None = None,
        ready_timeout: float = 90.0,
        keep_workdir: bool | None = None,
    ) -> None:
        self._apiserver_path = apiserver
        self._etcd_path = etcd
        self.ready_timeout = ready_timeout
        self.keep_workdir = (
            os.environ.get("KMSPLUG_KEEP_BED") == "1" if keep_workdir is None else keep_workdir
        )
        self.workdir: Path | None = None
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self.token = ""
        self.encryption_config: Path | None = None
        self.feature_gates: list[str] = []
        self.extra_args: list[str] = []
        self.automatic_reload = False
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._apiserver_starts = 0

    # -- paths and URLs -------------------------------------------------------------------

    def _dir(self) -> Path:
        if self.workdir is None:
            raise BedError("the bed is not started")
        return self.workdir

    @property
    def kubeconfig(self) -> Path:
        return self._dir() / "kubeconfig.yaml"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_log(self) -> Path:
        return self._dir() / "etcd.log"

    @property
    def apiserver_log(self) -> Path:
        return self._dir() / "kube-apiserver.log"

    @property
    def etcd_pid(self) -> int | None:
        return self._etcd.pid if self._etcd else None

    @property
    def apiserver_pid(self) -> int | None:
        return self._apiserver.pid if self._apiserver else None

    # -- lifecycle ------------------------------------------------------------------------

    def start(
        self,
        encryption_config_path: Path | str,
        feature_gates: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        *,
        automatic_reload: bool = False,
    ) -> Self:
        """Start etcd, then kube-apiserver, and wait until /readyz answers 200.

        feature_gates are passed to --feature-gates ("KMSv1=true"; a bare "KMSv1" means
        =true). extra_args are appended to kube-apiserver's flags, so they can override
        ours. automatic_reload sets --encryption-provider-config-automatic-reload=true.
        """
        if self.workdir is not None:
            raise BedError("the bed is already started")
        config = Path(encryption_config_path).resolve()
        if not config.is_file():
            raise BedError(f"no EncryptionConfiguration at {config}")
        apiserver = self._apiserver_path or apiserver_binary()
        etcd = self._etcd_path or etcd_binary()
        self._apiserver_path, self._etcd_path = apiserver, etcd
        self.encryption_config = config
        self.feature_gates = [gate if "=" in gate else f"{gate}=true" for gate in feature_gates]
        self.extra_args = list(extra_args)
        self.automatic_reload = automatic_reload
        self.workdir = Path(tempfile.mkdtemp(prefix="kmsplug-cluster-", dir="/tmp"))
        try:
            self._write_credentials()
            self._start_etcd()
            self._start_apiserver()
        except BaseException:
            self.stop()
            raise
        return self

    def restart_apiserver(self, encryption_config_path: Path | str | None = None) -> None:
        """Stop kube-apiserver (SIGTERM) and start it again on the same port and etcd.

        A new encryption_config_path replaces the old one; otherwise the same file is read
        again, so edits made to it take effect.
        """
        if self._apiserver is None:
            raise BedError("kube-apiserver is not running")
        if encryption_config_path is not None:
            self.encryption_config = Path(encryption_config_path).resolve()
        self._apiserver.stop(grace=20)
        self._apiserver = None
        self._start_apiserver(same_port=True)

    def stop(self) -> None:
        """Stop the processes this bed started (by PID) and remove its directory."""
        if self._apiserver is not None:
            self._apiserver.stop(grace=10)
            self._apiserver = None
        if self._etcd is not None:
            self._etcd.stop(grace=10)
            self._etcd = None
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_credentials(self) -> None:
        workdir = self._dir()
        # Service-account signing key: ECDSA P-256 (ES256), quick to generate.
        key, pub = workdir / "sa.key", workdir / "sa.pub"
        for argv in (
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
            ["openssl", "ec", "-in", str(key), "-pubout", "-out", str(pub)],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BedError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        self.token = secrets.token_hex(24)
        tokens = workdir / "tokens.csv"
        tokens.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        for path in (key, tokens):
            path.chmod(0o600)

    def _start_etcd(self) -> None:
        data_dir = self._dir() / "etcd-data"
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
            client = f"http://127.0.0.1:{self.etcd_port}"
            peer = f"http://127.0.0.1:{self.etcd_peer_port}"
            shutil.rmtree(data_dir, ignore_errors=True)
            argv = [
                str(self._etcd_path),
                "--name=bed",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=bed={peer}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-level=warn",
            ]
            self._etcd = _Process("etcd", argv, self.etcd_log)
            try:
                self._wait_ready(self._etcd, self._etcd_healthy)
                return
            except BedError as error:
                self._etcd.stop(grace=5)
                self._etcd = None
                last_error = str(error)
                if "address already in use" not in tail(self.etcd_log):
                    break
        raise BedError(last_error)

    def _apiserver_argv(self) -> list[str]:
        workdir = self._dir()
        argv = [
            str(self._apiserver_path),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={workdir / 'certs'}",
            f"--token-auth-file={workdir / 'tokens.csv'}",
            "--authorization-mode=AlwaysAllow",
            f"--service-account-key-file={workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={workdir / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            f"--encryption-provider-config={self.encryption_config}",
        ]
        if self.automatic_reload:
            argv.append("--encryption-provider-config-automatic-reload=true")
        if self.feature_gates:
            argv.append(f"--feature-gates={','.join(self.feature_gates)}")
        return argv + self.extra_args

    def _start_apiserver(self, *, same_port: bool = False) -> None:
        last_error = ""
        for _attempt in range(3):
            if not same_port or not self.apiserver_port:
                self.apiserver_port = free_port()
            self._apiserver_starts += 1
            with self.apiserver_log.open("a") as log:
                log.write(f"==== kmsplug bed: kube-apiserver start #{self._apiserver_starts}\n")
            self._apiserver = _Process("kube-apiserver", self._apiserver_argv(), self.apiserver_log)
            try:
                self._wait_ready(self._apiserver, self._apiserver_ready)
                self._write_kubeconfig()
                return
            except BedError as error:
                self._apiserver.stop(grace=5)
                self._apiserver = None
                last_error = str(error)
                if same_port or "address already in use" not in tail(self.apiserver_log):
                    break
        raise BedError(last_error)

    def _wait_ready(self, process: _Process, probe: Callable[[], tuple[bool, str]]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer yet"
        while True:
            code = process.exited()
            if code is not None:
                raise BedError(
                    f"{process.name} exited with status {code} while starting; "
                    f"last {LOG_TAIL_LINES} lines of {process.log_path}:\n{tail(process.log_path)}"
                )
            ok, last = probe()
            if ok:
                return
            if time.monotonic() > deadline:
                raise BedError(
                    f"{process.name} (pid {process.pid}) not ready after {self.ready_timeout} s "
                    f"({last}); last {LOG_TAIL_LINES} lines of {process.log_path}:\n"
                    f"{tail(process.log_path)}"
                )
            time.sleep(0.1)

    def _etcd_healthy(self) -> tuple[bool, str]:
        try:
            status, body = _http("GET", f"{self.etcd_url}/health", timeout=2)
        except OSError as error:
            return False, str(error)
        return status == 200 and b'"true"' in body, f"HTTP {status} {body[:200]!r}"

    def _apiserver_ready(self) -> tuple[bool, str]:
        try:
            status, body = self._api_get("/readyz", timeout=2)
        except OSError as error:
            return False, str(error)
        return status == 200, f"HTTP {status} {body[-300:]!r}"

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "bed",
                    "cluster": {"server": self.apiserver_url, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [
                {"name": "bed", "context": {"cluster": "bed", "user": ADMIN_USER}},
            ],
            "current-context": "bed",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    # -- talking to it --------------------------------------------------------------------

    def _api_get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        return _http(
            "GET",
            f"{self.apiserver_url}{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )

    def readyz_check(self, name: str) -> tuple[int, str]:
        """HTTP status and body of /readyz/<name>, e.g. "kms-providers" or "kms-provider-0"."""
        status, body = self._api_get(f"/readyz/{name}")
        return status, body.decode(errors="replace")

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the bed; with check, a failure raises BedError with stderr."""
        argv = ["kubectl", f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise BedError(
                f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def _etcd_range(self, request: dict[str, Any]) -> list[dict[str, str]]:
        status, body = _http(
            "POST",
            f"{self.etcd_url}/v3/kv/range",
            data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        )
        if status != 200:
            raise BedError(f"etcd range {request} -> HTTP {status}: {body[:500]!r}")
        kvs: list[dict[str, str]] = json.loads(body).get("kvs", [])
        return kvs

    def etcd_get_raw(self, key: str | bytes) -> bytes:
        """The value stored in etcd under key, as bytes (ciphertext for encrypted resources).

        Raises KeyError when there is no such key.
        """
        raw_key = key.encode() if isinstance(key, str) else key
        kvs = self._etcd_range({"key": _b64(raw_key)})
        if not kvs:
            raise KeyError(key)
        return base64.b64decode(kvs[0].get("value", ""))

    def etcd_list_keys(self, prefix: str | bytes) -> list[str]:
        """Every key that starts with prefix, sorted."""
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        kvs = self._etcd_range(
            {"key": _b64(raw), "range_end": _b64(_prefix_end(raw)), "keys_only": True}
        )
        return sorted(base64.b64decode(kv["key"]).decode(errors="replace") for kv in kvs)


def _http(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    """One HTTP(S) request to the bed on loopback: no proxies, self-signed TLS accepted."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the apiserver's cert is self-signed (--cert-dir)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)  # noqa: S310
    try:
        with opener.open(request, timeout=timeout) as response:
            status: int = response.status
            return status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.bed",
        description="Run a real etcd + kube-apiserver on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--config", required=True, type=Path, help="EncryptionConfiguration")
    parser.add_argument(
        "--feature-gate",
        action="append",
        default=[],
        metavar="GATE=BOOL",
        help="kube-apiserver feature gate, repeatable (e.g. KMSv1=true)",
    )
    parser.add_argument(
        "--automatic-reload",
        action="store_true",
        help="--encryption-provider-config-automatic-reload=true",
    )
    parser.add_argument(
        "--no-build", action="store_true", help="fail instead of building a missing apiserver"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs) after exit"
    )
    parser.add_argument(
        "extra_args", nargs="*", help="extra kube-apiserver flags (after --)", metavar="FLAG"
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    bed = ClusterBed(apiserver=apiserver_binary(build=not args.no_build), keep_workdir=args.keep)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored
    try:
        bed.start(
            args.config,
            feature_gates=args.feature_gate,
            extra_args=args.extra_args,
            automatic_reload=args.automatic_reload,
        )
        print(f"ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        print(f"kube-apiserver  {bed.apiserver_url} (pid {bed.apiserver_pid})", file=sys.stderr)
        print(f"etcd            {bed.etcd_url} (pid {bed.etcd_pid})", file=sys.stderr)
        print(f"logs            {bed.workdir}/*.log", file=sys.stderr)
        print(f"try             kubectl --kubeconfig={bed.kubeconfig} get ns", file=sys.stderr)
        print("Ctrl-C stops the bed", file=sys.stderr)
        print(bed.kubeconfig, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    except BedError as error:
        print(f"bed failed: {error}", file=sys.stderr)
        return 1
    finally:
        bed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
