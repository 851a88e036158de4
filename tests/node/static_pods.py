"""The static pods of a control-plane node: etcd and kube-apiserver written here the way
kubeadm writes them (host network, TLS to etcd with client certificates, hostPath
volumes), and kmsplug taken from deploy/static-pod.yaml as users copy it.

kmsplug's manifest is used as shipped, with two substitutions only: the image (the one
`make image` built, instead of the registry placeholder) and the hostPath directories,
moved under the test's own directory so a test never writes to the machine's
/var/run/kmsplugin; the paths inside the containers stay as deploy/ has them. The
apiserver mounts the same socket directory and reads deploy/encryption-config-v2.yaml
unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SOCKET_DIR = "/var/run/kmsplugin"  # where deploy/ puts the socket, in every container


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int


def _host_path(
    name: str, path: Path, mount: str, *, read_only: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": name, "hostPath": {"path": str(path), "type": "DirectoryOrCreate"}}
    mounted: dict[str, Any] = {"name": name, "mountPath": mount}
    if read_only:
        mounted["readOnly"] = True
    return volume, mounted


def _pod(name: str, container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system", "labels": {"tier": "control-plane"}},
        "spec": {
            "hostNetwork": True,
            "priorityClassName": "system-node-critical",
            "containers": [container],
            "volumes": volumes,
        },
    }


def etcd_pod(image: str, pki_dir: Path, data_dir: Path, ports: Ports) -> dict[str, Any]:
    client = f"https://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    pki, pki_mount = _host_path("pki", pki_dir, "/etc/kubernetes/pki", read_only=True)
    data, data_mount = _host_path("data", data_dir, "/var/lib/etcd")
    return _pod(
        "etcd",
        {
            "name": "etcd",
            "image": image,
            "command": [
                "/usr/local/bin/etcd",
                "--name=node",
                "--data-dir=/var/lib/etcd",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=node={peer}",
                "--listen-metrics-urls=",
                "--cert-file=/etc/kubernetes/pki/etcd-server.crt",
                "--key-file=/etc/kubernetes/pki/etcd-server.key",
                "--trusted-ca-file=/etc/kubernetes/pki/ca.crt",
                "--client-cert-auth",
                "--log-level=warn",
            ],
            "volumeMounts": [pki_mount, data_mount],
        },
        [pki, data],
    )


def apiserver_pod(
    image: str, pki_dir: Path, files_dir: Path, socket_dir: Path, ports: Ports
) -> dict[str, Any]:
    """kube-apiserver with deploy/encryption-config-v2.yaml and the plugin's socket dir."""
    pki, pki_mount = _host_path("pki", pki_dir, "/etc/kubernetes/pki", read_only=True)
    files, files_mount = _host_path("files", files_dir, "/etc/kubernetes/node", read_only=True)
    kms, kms_mount = _host_path("kmsplugin", socket_dir, SOCKET_DIR)
    return _pod(
        "kube-apiserver",
        {
            "name": "kube-apiserver",
            "image": image,
            "command": [
                "/usr/local/bin/kube-apiserver",
                f"--etcd-servers=https://127.0.0.1:{ports.etcd_client}",
                "--etcd-cafile=/etc/kubernetes/pki/ca.crt",
                "--etcd-certfile=/etc/kubernetes/pki/etcd-client.crt",
                "--etcd-keyfile=/etc/kubernetes/pki/etcd-client.key",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--secure-port={ports.apiserver}",
                "--tls-cert-file=/etc/kubernetes/pki/etcd-server.crt",
                "--tls-private-key-file=/etc/kubernetes/pki/etcd-server.key",
                "--token-auth-file=/etc/kubernetes/node/tokens.csv",
                "--authorization-mode=AlwaysAllow",
                "--service-account-key-file=/etc/kubernetes/node/sa.pub",
                "--service-account-signing-key-file=/etc/kubernetes/node/sa.key",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--encryption-provider-config=/etc/kubernetes/node/encryption-config.yaml",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
            "volumeMounts": [pki_mount, files_mount, kms_mount],
        },
        [pki, files, kms],
    )


def kmsplug_pod(image: str, host_root: Path) -> dict[str, Any]:
    """deploy/static-pod.yaml with the local image and its hostPaths under host_root."""
    pod: dict[str, Any] = yaml.safe_load((DEPLOY / "static-pod.yaml").read_text())
    pod = copy.deepcopy(pod)
    for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
        container["image"] = image
    for volume in pod["spec"]["volumes"]:
        if "hostPath" in volume:
            volume["hostPath"]["path"] = str(host_root / volume["hostPath"]["path"].lstrip("/"))
    return pod


def host_path(pod: dict[str, Any], volume_name: str) -> Path:
    for volume in pod["spec"]["volumes"]:
        if volume["name"] == volume_name:
            return Path(volume["hostPath"]["path"])
    raise KeyError(volume_name)


def write_manifest(directory: Path, pod: dict[str, Any]) -> Path:
    path = directory / f"{pod['metadata']['name']}.yaml"
    tmp = directory / f".{path.name}"  # the kubelet reads every file not starting with '.'
    tmp.write_text(yaml.safe_dump(pod, sort_keys=False))
    tmp.rename(path)
    return path
