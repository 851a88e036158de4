"""A control-plane node on this machine: containerd + runc, a kubelet, and static pods for
etcd, kube-apiserver and kmsplug (from deploy/static-pod.yaml).

`ControlPlaneNode(workdir, ...).start()` writes the node's files (PKI, tokens, keys, the
EncryptionConfiguration from deploy/), starts containerd and the kubelet, drops the
manifests into the kubelet's static pod directory and waits until the apiserver
answers /readyz (which includes the KMS plugin's health). stop() ends the kubelet and
containerd by their PIDs after removing every pod sandbox, and removes the cgroups the
kubelet made under its own cgroup root.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[0] / "e2e"), str(HERE.parents[0])]

from containerd import Containerd, remove_workdir  # noqa: E402
from kubelet import CGROUP_ROOT, NODE_NAME, Kubelet  # noqa: E402
from pki import EtcdPki, make_etcd_pki  # noqa: E402
from ports import PortTaken, free_port, port_taken  # noqa: E402
from static_pods import (  # noqa: E402
    DEPLOY,
    Ports,
    apiserver_pod,
    etcd_pod,
    host_path,
    kmsplug_pod,
    write_manifest,
)

from kmsplug.cluster.etcd import EtcdReader, EtcdTls  # noqa: E402

from bed import service_account_keys  # noqa: E402

CGROUPS = Path("/sys/fs/cgroup")
MIRROR_PODS = {f"{name}-{NODE_NAME}" for name in ("etcd", "kube-apiserver", "kmsplug")}


@dataclass(frozen=True)
class Images:
    kmsplug: str
    etcd: str
    apiserver: str


@dataclass
class ControlPlaneNode:
    workdir: Path
    kubelet_binary: Path
    crictl_binary: Path
    images: Images
    archives: list[Path]
    ports: Ports = field(default_factory=lambda: Ports(free_port(), free_port(), free_port()))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    containerd: Containerd | None = None
    kubelet: Kubelet | None = None
    pki: EtcdPki | None = None
    kmsplug_manifest: dict[str, Any] = field(default_factory=dict)

    # -- paths -----------------------------------------------------------------------

    @property
    def files(self) -> Path:
        return self.workdir / "files"

    @property
    def host_root(self) -> Path:
        """Where the kmsplug pod's hostPaths (/var/run/kmsplugin, ...) live on this node."""
        return self.workdir / "host"

    @property
    def socket_dir(self) -> Path:
        return host_path(self.kmsplug_manifest, "socket-dir")

    @property
    def key_dir(self) -> Path:
        return host_path(self.kmsplug_manifest, "key-dir")

    @property
    def audit_dir(self) -> Path:
        return host_path(self.kmsplug_manifest, "audit-dir")

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def etcd_tls(self) -> EtcdTls:
        assert self.pki is not None
        return EtcdTls(str(self.pki.ca), str(self.pki.client_cert), str(self.pki.client_key))

    @property
    def etcd_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.etcd_client}"

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 300.0) -> ControlPlaneNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._write_files()
            self.containerd = Containerd(self.workdir / "containerd", self.crictl_binary).start()
            for archive in self.archives:
                self.containerd.import_archive(archive)
            _make_cgroup_root()
            self.kubelet = Kubelet(
                self.workdir / "kubelet",
                self.kubelet_binary,
                self.containerd.endpoint,
                self.kubeconfig,
                free_port(),
            ).start()
            manifests = self.kubelet.manifests
            write_manifest(
                manifests,
                etcd_pod(self.images.etcd, self.workdir / "pki", self.workdir / "etcd", self.ports),
            )
            write_manifest(
                manifests,
                apiserver_pod(
                    self.images.apiserver,
                    self.workdir / "pki",
                    self.files,
                    self.socket_dir,
                    self.ports,
                ),
            )
            write_manifest(manifests, self.kmsplug_manifest)
            self.wait_ready(timeout)
        except BaseException as exc:
            clash = isinstance(exc, RuntimeError) and port_taken(f"{exc}\n{self.diagnose()}")
            self.stop()
            if clash:  # a port picked free was taken before etcd/apiserver/kubelet bound it
                raise PortTaken(str(exc)) from exc
            raise
        return self

    def repick_ports(self) -> None:
        """New ports and a clean work directory, for a start after PortTaken."""
        self.ports = Ports(free_port(), free_port(), free_port())
        self.containerd = self.kubelet = None
        remove_workdir(self.workdir)

    def _write_files(self) -> None:
        self.pki = make_etcd_pki(self.workdir / "pki")
        self.files.mkdir(exist_ok=True)
        (self.files / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        service_account_keys(self.files)
        # deploy/'s KMS v2 configuration as shipped: its socket path is the one the
        # apiserver pod sees through the shared hostPath.
        shutil.copy(DEPLOY / "encryption-config-v2.yaml", self.files / "encryption-config.yaml")
        self.kmsplug_manifest = kmsplug_pod(self.images.kmsplug, self.host_root)
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "node",
                            "cluster": {
                                "server": self.server_url,
                                "certificate-authority": str(self.pki.ca),
                            },
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": self.token}}],
                    "contexts": [{"name": "node", "context": {"cluster": "node", "user": "admin"}}],
                    "current-context": "node",
                }
            )
        )

    def wait_ready(self, timeout: float) -> None:
        """Until the apiserver is ready and shows the kubelet's three mirror pods."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = self.get("/readyz")
            if status == 200 and len(self.mirror_pods()) == len(MIRROR_PODS):
                return
            assert self.kubelet is not None and self.kubelet.proc is not None
            if self.kubelet.proc.poll() is not None:
                raise RuntimeError(f"the kubelet exited:\n{self.kubelet.log_tail()}")
            time.sleep(1)
        raise RuntimeError(f"the apiserver static pod did not get ready:\n{self.diagnose()}")

    def diagnose(self) -> str:
        """Container states and the last log lines: what a failing test should show."""
        parts = []
        if self.containerd is not None:
            listed = self.containerd.crictl("ps", "--all", check=False)
            parts.append(listed.stdout + listed.stderr)
            for pod_logs in sorted((self.workdir / "kubelet" / "pod-logs").glob("*/*/*.log")):
                text = pod_logs.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"== {pod_logs.relative_to(self.workdir)}\n" + "\n".join(text))
        if self.kubelet is not None:
            parts.append("== kubelet\n" + self.kubelet.log_tail(30))
        return "\n".join(parts)

    def stop(self) -> None:
        try:
            if self.kubelet is not None:
                self.kubelet.stop()
        finally:
            try:
                if self.containerd is not None:
                    self.containerd.stop()
            finally:
                _remove_cgroup_root()

    def remove(self) -> None:
        remove_workdir(self.workdir)

    # -- clients ---------------------------------------------------------------------

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET an apiserver path as admin; (status, body), status 0 if unreachable."""
        context = ssl.create_default_context(cafile=str(self.pki.ca)) if self.pki else None
        request = urllib.request.Request(  # noqa: S310 - loopback apiserver
            self.server_url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError:
            return 0, ""

    def mirror_pods(self) -> set[str]:
        status, body = self.get("/api/v1/namespaces/kube-system/pods")
        if status != 200:
            return set()
        names = {pod["metadata"]["name"] for pod in json.loads(body)["items"]}
        return names & MIRROR_PODS

    def core(self) -> Any:
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(config_file=str(self.kubeconfig)))

    def raw(self, key: str) -> bytes:
        value = EtcdReader(self.etcd_url, tls=self.etcd_tls).get(key.encode())
        if value is None:
            raise KeyError(key)
        return value


def _hierarchies() -> list[Path]:
    """Every cgroup v1 hierarchy mounted under /sys/fs/cgroup (cgroup v2: just the root)."""
    if (CGROUPS / "cgroup.controllers").exists():
        return [CGROUPS]
    return [p for p in CGROUPS.iterdir() if p.is_dir() and not p.is_symlink()]


def _make_cgroup_root() -> None:
    """The kubelet refuses a cgroupRoot that does not exist in every hierarchy."""
    for hierarchy in _hierarchies():
        root = hierarchy / CGROUP_ROOT.lstrip("/")
        root.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset starts empty
            if (root / name).exists() and not (root / name).read_text().strip():
                (root / name).write_text((hierarchy / name).read_text())


def _remove_cgroup_root() -> None:
    """Remove the (empty, once the pods are gone) cgroups below the kubelet's root."""
    for hierarchy in _hierarchies():
        root = hierarchy / CGROUP_ROOT.lstrip("/")
        if not root.exists():
            continue
        for directory in sorted(
            (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            _rmdir(directory)
        _rmdir(root)


def _rmdir(directory: Path) -> None:
    # still in use (a leftover process): leave it rather than fail the teardown
    with contextlib.suppress(OSError):
        directory.rmdir()
