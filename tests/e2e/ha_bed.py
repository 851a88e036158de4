"""An HA control plane of three "nodes" on loopback, for tests of kmsplug in HA clusters.

Each node has its own kube-apiserver and its own kmsplug process (own socket, own
EncryptionConfiguration pointing at it); the nodes share what real nodes share:
- a three-member etcd cluster as kubeadm runs it: TLS for clients and peers, client
  certificates required, one server and one peer certificate per member, one etcd client
  certificate per apiserver;
- the service-account keys and the token file (a token from one apiserver is valid at all);
- one remote KMS: the strict Alibaba fake (one CMK, one RAM user), or the local provider
  with one key file copied to each node.

Each apiserver runs in a UTS namespace of its own with the node's hostname when the
machine allows it (root), so the three have distinct apiserver identities as on real nodes.

Kept small for a 2-core machine (about 1.3 GB resident in all: three apiservers of ~300
MB, three plugins of ~80 MB, three etcd members of ~50 MB): etcd on tmpfs with a 1 GiB
backend quota, and apiserver flags that drop what these tests never use (TRIM_FLAGS).
Ports are picked free and a start that loses a port to another process is retried on
new ones (ports.retry_port_clash).

`make cluster-ha` (or `python tests/e2e/ha_bed.py`) starts one for a person to poke at,
prints where everything is and writes it to bed.json; Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1] / "python"), str(HERE.parent), str(HERE)]

from pki import CLIENT_ONLY, SERVER_AND_CLIENT, CertificateAuthority  # noqa: E402
from ports import PortTaken, free_port, retry_port_clash  # noqa: E402

from kmsplug.cluster.etcd import EtcdReader, EtcdTls  # noqa: E402
from kmsplug.encryption_config import encryption_configuration  # noqa: E402
from kmsplug.endpoint import Endpoint  # noqa: E402

from bed import (  # noqa: E402
    apiserver_args,
    end_process,
    etcd_answers,
    etcd_binary,
    https_get,
    log_tail,
    said_port_taken,
    service_account_keys,
    start_logged,
    wait_until,
    write_kubeconfig,
)
from configs import merged_config  # noqa: E402
from fakes.alibaba_kms import FakeAlibabaKms  # noqa: E402
from plugin_process import PluginProcess  # noqa: E402

NODE_NAMES = ("a", "b", "c")
V2_NAME = "kmsplug"
V1_NAME = "kmsplug-v1"

# What the tests never use, off: less memory and CPU per apiserver. API groups stay on:
# the apiserver's own post-start hooks and admission plugins list most of them.
TRIM_FLAGS = (
    "--runtime-config=autoscaling/v1=false,autoscaling/v2=false,batch/v1=false",
    "--enable-garbage-collector=false",  # no controller-manager runs to collect anything
    "--watch-cache-sizes=events#0",
    "--event-ttl=5m",
)
ETCD_QUOTA_BYTES = 1 << 30
"""1 GiB: room for 50,000 Secrets and their history until the apiserver compacts."""


@functools.cache
def can_set_hostname() -> bool:
    """Whether processes can get a hostname of their own (a UTS namespace: root only)."""
    try:
        done = subprocess.run(
            ["unshare", "--uts", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def with_hostname(args: list[str], hostname: str) -> list[str]:
    """`args` run under `hostname` (the same process: unshare and sh exec into it)."""
    if not can_set_hostname():
        return args
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *args]


# -- etcd ------------------------------------------------------------------------------


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    log: Path
    server_cert: tuple[Path, Path]
    peer_cert: tuple[Path, Path]
    client_port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """Three etcd members with TLS and client certificates everywhere, as kubeadm sets
    up a stacked HA control plane (one member per control-plane node)."""

    def __init__(
        self, workdir: Path, data_root: Path, ca: CertificateAuthority, quota_bytes: int
    ) -> None:
        self.workdir = workdir
        self.ca = ca
        self.quota_bytes = quota_bytes
        self.members = [
            EtcdMember(
                name,
                data_root / f"etcd-{name}",
                workdir / f"etcd-{name}.log",
                ca.issue(f"etcd-server-{name}", SERVER_AND_CLIENT, server=True),
                ca.issue(f"etcd-peer-{name}", SERVER_AND_CLIENT, server=True),
            )
            for name in NODE_NAMES
        ]
        # for the bed's own reads (what `kmsplug verify` would present)
        self.client_cert = ca.issue("etcd-healthcheck-client", CLIENT_ONLY, server=False)

    @property
    def urls(self) -> list[str]:
        return [member.client_url for member in self.members]

    def tls(self, client: tuple[Path, Path] | None = None) -> EtcdTls:
        cert, key = client or self.client_cert
        return EtcdTls(str(self.ca.cert_path), str(cert), str(key))

    def reader(self) -> EtcdReader:
        return EtcdReader(self.urls[0], tls=self.tls())

    def apiserver_flags(self, client: tuple[Path, Path]) -> list[str]:
        cert, key = client
        return [
            "--etcd-servers=" + ",".join(self.urls),
            f"--etcd-cafile={self.ca.cert_path}",
            f"--etcd-certfile={cert}",
            f"--etcd-keyfile={key}",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start all three; a port lost to another process starts the cluster again from
        scratch on new ones."""
        retry_port_clash(lambda: self._start_once(timeout), self.stop)

    def _start_once(self, timeout: float) -> None:
        token = secrets.token_hex(8)
        for member in self.members:
            member.client_port, member.peer_port = free_port(), free_port()
            shutil.rmtree(member.data_dir, ignore_errors=True)
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        log_starts = {}
        for member in self.members:
            member.proc, log_starts[member.name] = start_logged(
                self._args(member, cluster, token), member.log
            )
        for member in self.members:
            assert member.proc is not None
            if wait_until(
                lambda m=member: etcd_answers(m.client_url, self.tls()),  # type: ignore[misc]
                member.proc,
                timeout,
                0.2,
            ):
                continue
            if said_port_taken(member.log, log_starts[member.name]):
                raise PortTaken(f"etcd member {member.name}: a port was taken")
            raise RuntimeError(f"etcd member {member.name} did not start:\n{log_tail(member.log)}")

    def _args(self, member: EtcdMember, cluster: str, token: str) -> list[str]:
        ca = self.ca.cert_path
        (server_cert, server_key), (peer_cert, peer_key) = member.server_cert, member.peer_cert
        return [
            str(etcd_binary()),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={token}",
            f"--cert-file={server_cert}",
            f"--key-file={server_key}",
            f"--trusted-ca-file={ca}",
            "--client-cert-auth=true",
            f"--peer-cert-file={peer_cert}",
            f"--peer-key-file={peer_key}",
            f"--peer-trusted-ca-file={ca}",
            "--peer-client-cert-auth=true",
            f"--quota-backend-bytes={self.quota_bytes}",
            "--snapshot-count=10000",  # kubeadm's setting
            "--log-level=warn",
        ]

    def stop(self) -> None:
        for member in self.members:
            end_process(member.proc)
            member.proc = None


# -- the shared KMS --------------------------------------------------------------------


@dataclass
class SharedKms:
    """The remote key every node's plugin uses, and how a plugin is told about it."""

    provider: str
    fake: FakeAlibabaKms | None = None
    cmk: str = ""
    env: dict[str, str] = field(default_factory=dict)
    key_file: Path | None = None
    """local provider: the one key file, copied to every node."""

    @classmethod
    def alibaba(cls) -> SharedKms:
        fake = FakeAlibabaKms().start()
        cmk = fake.create_key()
        access = fake.add_access_key()
        env = {"ACCESS_KEY_ID": access.access_key_id, "ACCESS_KEY_SECRET": access.access_key_secret}
        return cls("alibaba", fake, cmk, env)

    @classmethod
    def local(cls, workdir: Path) -> SharedKms:
        key_file = workdir / "local.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
        return cls("local", key_file=key_file)

    def serve_args(self) -> list[str]:
        if self.fake is None:
            return ["--provider", "local"]
        return [
            *("--provider", "alibaba", "--key-id", self.cmk, "--region", self.fake.region),
            *("--kms-endpoint", self.fake.host, "--kms-protocol", "http"),
        ]

    def node_key_file(self, node_dir: Path) -> Path:
        """The node's copy of the key file (alibaba: a path kmsplug never writes to)."""
        target = node_dir / "local.key"
        if self.key_file is not None and not target.exists():
            shutil.copy2(self.key_file, target)  # keeps mode 0600
        return target

    @property
    def current_key_version(self) -> str:
        assert self.fake is not None
        return self.fake.describe(self.cmk).primary_key_version

    def key_id(self) -> str:
        """The v2 key_id every plugin should report now (alibaba only)."""
        return f"alibaba:{self.cmk}:{self.current_key_version}"

    def stop(self) -> None:
        if self.fake is not None:
            self.fake.stop()


# -- one node --------------------------------------------------------------------------


@dataclass
class ApiserverSettings:
    """What every node's kube-apiserver shares: the token file and service-account keys
    (in `credentials`), the cluster CA that signs every apiserver's serving certificate."""

    credentials: Path
    token: str
    cluster_ca: CertificateAuthority
    feature_gates: tuple[str, ...]
    extra_args: tuple[str, ...]


@dataclass
class Node:
    """One control-plane node: a kmsplug process and the kube-apiserver that uses it."""

    name: str
    workdir: Path
    plugin: PluginProcess
    settings: ApiserverSettings
    etcd_flags: list[str]
    encryption_config: Path
    apiserver_port: int = 0
    apiserver: subprocess.Popen[bytes] | None = None
    _log_start: int = 0

    @property
    def hostname(self) -> str:
        return f"node-{self.name}"

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def apiserver_log(self) -> Path:
        return self.workdir / "apiserver.log"

    # -- kube-apiserver --------------------------------------------------------------

    def launch_apiserver(self) -> None:
        """Start the process on a fresh port; `await_apiserver` waits for it."""
        self.apiserver_port = free_port()
        ca = self.settings.cluster_ca
        cert, key = ca.issue(f"apiserver-{self.name}", SERVER_AND_CLIENT, server=True)
        args = apiserver_args(
            port=self.apiserver_port,
            cert_dir=self.workdir / "certs",
            credentials=self.settings.credentials,
            etcd_flags=self.etcd_flags,
            encryption_config=self.encryption_config,
            feature_gates=self.settings.feature_gates,
            extra_args=(
                *self.settings.extra_args,
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
            ),
        )
        write_kubeconfig(self.kubeconfig, self.server_url, ca.cert_path, self.settings.token)
        launched = with_hostname(args, self.hostname)
        self.apiserver, self._log_start = start_logged(launched, self.apiserver_log)

    def await_apiserver(self, timeout: float, ready_path: str = "/readyz") -> None:
        """Wait for `ready_path` to answer 200; a port lost to another process meanwhile
        starts it again on a new one."""
        try:
            self._await_once(timeout, ready_path)
        except PortTaken:
            self.start_apiserver(timeout, ready_path)

    def _await_once(self, timeout: float, ready_path: str) -> None:
        assert self.apiserver is not None
        if wait_until(lambda: self.get(ready_path)[0] == 200, self.apiserver, timeout, 0.25):
            return
        self.stop_apiserver()
        if said_port_taken(self.apiserver_log, self._log_start):
            raise PortTaken(f"node {self.name}: the apiserver's port was taken")
        raise RuntimeError(
            f"kube-apiserver of node {self.name} did not get ready:\n{log_tail(self.apiserver_log)}"
        )

    def start_apiserver(self, timeout: float = 180.0, ready_path: str = "/readyz") -> None:
        """Start on a free port and wait; each retry after a lost port picks a new one."""

        def once() -> None:
            self.launch_apiserver()
            self._await_once(timeout, ready_path)

        retry_port_clash(once, lambda: None)

    def stop_apiserver(self) -> None:
        end_process(self.apiserver)
        self.apiserver = None

    def restart_apiserver(self, timeout: float = 180.0) -> None:
        self.stop_apiserver()
        self.start_apiserver(timeout)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        return https_get(self.server_url + path, self.settings.token, timeout)

    def kms_health(self) -> tuple[int, str]:
        """The apiserver's verdict on its KMS providers: /readyz, verbose, KMS lines only."""
        status, body = self.get("/readyz?verbose", timeout=15)
        lines = [line for line in body.splitlines() if "kms-provider" in line]
        return status, "\n".join(lines)

    def kms_healthy(self) -> bool:
        status, lines = self.kms_health()
        return status == 200 and bool(lines) and "failed" not in lines

    def wait_kms(self, healthy: bool, timeout: float = 120.0) -> float:
        """Wait until the apiserver's KMS verdict is `healthy`; seconds it took."""
        started = time.monotonic()
        while self.kms_healthy() != healthy:
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"node {self.name}: KMS not {'healthy' if healthy else 'failing'} after "
                    f"{timeout:.0f} s: {self.kms_health()}"
                )
            time.sleep(1)
        return time.monotonic() - started

    def core(self) -> Any:
        """A CoreV1Api client (the official Python client) for this node's apiserver."""
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(config_file=str(self.kubeconfig)))

    # -- kmsplug -----------------------------------------------------------------------

    def stop_plugin(self) -> int:
        """SIGTERM (calls in flight finish); the exit code."""
        return self.plugin.terminate()

    def kill_plugin(self) -> None:
        """SIGKILL: no drain, the socket file stays behind."""
        self.plugin.kill()

    def start_plugin(self, timeout: float = 60.0) -> None:
        self.plugin.start(timeout)

    @property
    def plugin_running(self) -> bool:
        return self.plugin.proc is not None and self.plugin.proc.poll() is None

    @property
    def apiserver_running(self) -> bool:
        return self.apiserver is not None and self.apiserver.poll() is None

    def restart_plugin(self, *, kill: bool = False) -> float:
        """Stop (SIGTERM, or SIGKILL) and start again; seconds from the signal to ready."""
        started = time.monotonic()
        if kill:
            self.kill_plugin()
        else:
            self.stop_plugin()
        self.start_plugin()
        return time.monotonic() - started

    def plugin_metrics(self) -> dict[str, float]:
        """kmsplug's /metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(self.plugin.http_url + "/metrics", timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def plugin_status(self) -> tuple[str, str]:
        """(healthz, key_id) from the plugin's v2 Status, asked over its socket."""
        import anyio

        from kmsplug.client import KmsClient

        async def ask() -> tuple[str, str]:
            async with KmsClient(self.plugin.endpoint, timeout=10) as client:
                status = await client.v2_status(wait_for_ready=True)
                return status.healthz, status.key_id

        return anyio.run(ask)


# -- the bed ---------------------------------------------------------------------------


@dataclass
class HaBed:
    """Three nodes, one etcd cluster, one KMS. `start()`, use `nodes`, `stop()`."""

    workdir: Path
    provider: str = "alibaba"
    v2_resources: tuple[str, ...] = ("secrets",)
    v1_resources: tuple[str, ...] = ("configmaps",)
    v1_cachesize: int | None = None
    v1_timeout: str = "20s"
    """KMS v1 asks the plugin on every write: a timeout above a plugin restart's length lets
    the apiserver hold those calls until the plugin is back (the default 3 s fails them)."""
    plugin_args: tuple[str, ...] = ("--health-probe-interval", "5")
    apiserver_extra: tuple[str, ...] = TRIM_FLAGS
    etcd_quota_bytes: int = ETCD_QUOTA_BYTES
    nodes: list[Node] = field(default_factory=list)
    kms: SharedKms | None = None
    etcd: EtcdCluster | None = None
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    _data_root: Path | None = None

    @property
    def shared_kms(self) -> SharedKms:
        assert self.kms is not None
        return self.kms

    @property
    def fake(self) -> FakeAlibabaKms:
        assert self.kms is not None and self.kms.fake is not None
        return self.kms.fake

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    @property
    def admin_conf(self) -> Path:
        """A kubeconfig for node a whose CA verifies every node's apiserver."""
        return self.workdir / "admin.conf"

    def start(self, timeout: float = 300.0) -> HaBed:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(timeout)
        except BaseException:  # Ctrl-C or a failed start: leave no process behind
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        shm = Path("/dev/shm")
        self._data_root = Path(
            tempfile.mkdtemp(prefix="kmsplug-ha-etcd-", dir=shm if shm.is_dir() else None)
        )
        ca = CertificateAuthority(self.workdir / "etcd-pki")
        self.etcd = EtcdCluster(self.workdir, self._data_root, ca, self.etcd_quota_bytes)
        self.etcd.start()
        credentials = self.workdir / "credentials"
        credentials.mkdir(exist_ok=True)
        (credentials / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        service_account_keys(credentials)
        cluster_ca = CertificateAuthority(credentials / "pki", "bed-cluster-ca")
        self.kms = SharedKms.alibaba() if self.provider == "alibaba" else SharedKms.local(
            self.workdir
        )  # fmt: skip
        gates = ("KMSv1=true",) if self.v1_resources else ()
        settings = ApiserverSettings(
            credentials, self.token, cluster_ca, gates, self.apiserver_extra
        )
        for name in NODE_NAMES:
            node_dir = self.workdir / f"node-{name}"
            node_dir.mkdir(exist_ok=True)
            plugin = PluginProcess(
                endpoint=Endpoint(path=str(node_dir / "kms.sock")),
                key_file=self.kms.node_key_file(node_dir),
                args=[*self.kms.serve_args(), *self.plugin_args],
                log_path=node_dir / "kmsplug.log",
                env=self.kms.env,
            )
            client_cert = ca.issue(f"apiserver-etcd-client-{name}", CLIENT_ONLY, server=False)
            self.nodes.append(
                Node(
                    name,
                    node_dir,
                    plugin,
                    settings,
                    self.etcd.apiserver_flags(client_cert),
                    self.encryption_config(node_dir / "encryption.yaml", plugin.endpoint),
                )
            )
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # independent: start together
            list(pool.map(lambda node: node.start_plugin(), self.nodes))
        for node in self.nodes:
            node.launch_apiserver()
        for node in self.nodes:
            node.await_apiserver(timeout)
        # as kubeadm's admin.conf: the cluster CA, one server (no load balancer here)
        write_kubeconfig(
            self.admin_conf, self.nodes[0].server_url, cluster_ca.cert_path, self.token
        )

    def encryption_config(self, path: Path, endpoint: Endpoint) -> Path:
        """The node's EncryptionConfiguration: the same on every node but the socket."""
        documents = []
        if self.v2_resources:
            documents.append(
                encryption_configuration(endpoint, name=V2_NAME, resources=self.v2_resources)
            )
        if self.v1_resources:
            documents.append(
                encryption_configuration(
                    endpoint,
                    api="v1",
                    name=V1_NAME,
                    resources=self.v1_resources,
                    cachesize=self.v1_cachesize,
                    timeout=self.v1_timeout,
                )
            )
        return merged_config(path, *documents)

    def stop(self) -> None:
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(Node.stop_apiserver, self.nodes))
        for node in self.nodes:
            node.plugin.kill()
        if self.etcd is not None:
            self.etcd.stop()
        if self.kms is not None:
            self.kms.stop()
        if self._data_root is not None:
            shutil.rmtree(self._data_root, ignore_errors=True)

    def heal(self, timeout: float = 300.0) -> None:
        """Undo what a test may have changed: the KMS answers and the key is enabled, every
        plugin and apiserver runs, and every apiserver finds its KMS providers healthy."""
        kms = self.shared_kms
        if kms.fake is not None:
            kms.fake.clear_faults()
            kms.fake.set_key_state(kms.cmk, "Enabled")
        for node in self.nodes:
            if not node.plugin_running:
                node.start_plugin()
        stopped = [node for node in self.nodes if not node.apiserver_running]
        for node in stopped:
            node.stop_apiserver()
            node.launch_apiserver()
        for node in stopped:
            node.await_apiserver(timeout)
        for node in self.nodes:
            node.wait_kms(healthy=True, timeout=timeout)

    # -- conveniences for tests --------------------------------------------------------

    def raw(self, key: str) -> bytes:
        """A value exactly as etcd stores it."""
        assert self.etcd is not None
        value = self.etcd.reader().get(key.encode())
        if value is None:
            raise KeyError(key)
        return value

    def each_node(self, work: Callable[[Node], Any]) -> list[Any]:
        """Run `work` on every node at once; results in node order."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            return list(pool.map(work, self.nodes))

    def describe(self) -> dict[str, Any]:
        """Where everything is, for a person (written to bed.json by `make cluster-ha`)."""
        assert self.etcd is not None and self.kms is not None
        kms: dict[str, Any] = {"provider": self.kms.provider}
        if self.kms.fake is not None:
            kms |= {
                "endpoint": self.kms.fake.endpoint,
                "key_id": self.kms.cmk,
                "access_key_id": self.kms.env["ACCESS_KEY_ID"],
            }
        else:
            kms["key_file"] = str(self.kms.key_file)
        tls = self.etcd.tls()
        return {
            "etcd": {
                "urls": self.etcd.urls,
                "cacert": tls.ca_file,
                "cert": tls.cert_file,
                "key": tls.key_file,
            },
            "kms": kms,
            "nodes": [
                {
                    "name": node.name,
                    "apiserver": node.server_url,
                    "kubeconfig": str(node.kubeconfig),
                    "socket": node.plugin.endpoint.url,
                    "plugin_metrics": node.plugin.http_url + "/metrics",
                    "logs": [str(node.apiserver_log), str(node.plugin.log_path)],
                }
                for node in self.nodes
            ],
        }


@contextlib.contextmanager
def running_bed(workdir: Path | None = None, **options: Any) -> Iterator[HaBed]:
    """A started bed, stopped and removed on exit."""
    root = workdir or Path(tempfile.mkdtemp(prefix="kmsplug-ha-", dir="/tmp"))
    bed = HaBed(root, **options)
    try:
        yield bed.start()
    finally:
        bed.stop()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


# -- helpers for tests -------------------------------------------------------------------


def write_objects(node: Node, resource: str, count: int, prefix: str) -> dict[str, str]:
    """Create `count` Secrets or ConfigMaps through `node`; name -> value written."""
    core = node.core()
    made: dict[str, str] = {}
    for i in range(count):
        name = f"{prefix}-{i}-{secrets.token_hex(3)}"
        value = f"confidential-{secrets.token_hex(12)}"
        if resource == "secrets":
            body = {"metadata": {"name": name}, "stringData": {"v": value}}
            core.create_namespaced_secret("default", body)
        else:
            body = {"metadata": {"name": name}, "data": {"v": value}}
            core.create_namespaced_config_map("default", body)
        made[name] = value
    return made


def read_values(node: Node, resource: str, names: Sequence[str]) -> dict[str, str]:
    """Read objects back through `node`: name -> the value it returns."""
    import base64

    core = node.core()
    values = {}
    for name in names:
        if resource == "secrets":
            data = core.read_namespaced_secret(name, "default").data
            values[name] = base64.b64decode(data["v"]).decode()
        else:
            values[name] = core.read_namespaced_config_map(name, "default").data["v"]
    return values


def stored(bed: HaBed, resource: str, name: str) -> tuple[bytes, str]:
    """(the etcd prefix up to the provider name, the key_id) an object is stored with."""
    from kmsplug.cluster.storage import classify

    raw = bed.raw(f"/registry/{resource}/default/{name}")
    storage = classify(raw)
    return raw[: raw.index(b":", len(b"k8s:enc:kms:v2:")) + 1], storage.key_id


def rss_mib(pids: Sequence[int]) -> dict[int, float]:
    """Resident memory of each process, MiB (from /proc)."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if found:
                out[pid] = int(found.group(1)) / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Three control-plane nodes on loopback.")
    parser.add_argument("--provider", choices=("alibaba", "local"), default="alibaba")
    parser.add_argument(
        "--v1-secrets", action="store_true", help="Secrets through KMS v1 (default: v2)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kmsplug-ha-"))
    options: dict[str, Any] = {"provider": args.provider}
    if args.v1_secrets:
        options |= {"v2_resources": (), "v1_resources": ("secrets",)}
    stop = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    with running_bed(workdir, **options) as bed:
        # blocked only now: the processes started above must not inherit the mask
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # delivered to sigwait, not fatal
        document = bed.describe()
        (workdir / "bed.json").write_text(json.dumps(document, indent=1))
        print(json.dumps(document, indent=1))
        sockets = " ".join(f"--socket {node['socket']}" for node in document["nodes"])
        print(f"\nkmsplug key-agreement {sockets}")
        print(f"export KUBECONFIG={document['nodes'][0]['kubeconfig']}   # node a")
        print(f"(written to {workdir / 'bed.json'}) Ctrl-C stops everything.", flush=True)
        signal.sigwait(stop)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
