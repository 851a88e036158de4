"""The deploy/ artifacts, validated by what can run here.

- the static pod: created with a server-side dry run on the real kube-apiserver (full
  schema and admission validation, nothing persisted);
- each EncryptionConfiguration example: loaded by a real kube-apiserver (its endpoint
  pointed at a test socket) that then stores a Secret through kmsplug;
- the systemd unit: `systemd-analyze verify`;
- the Helm chart: `helm lint`, rendered for Alibaba and for Vault (its settings must be
  flags `kmsplug serve` accepts), each DaemonSet dry-run created on the real apiserver.
The image (deploy/Dockerfile) and the static pod on a real kubelet: tests/node.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bed import ClusterBed
from configs import write_config
from plugin_process import PluginFactory, PluginProcess

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def pointed_at(example: str, plugin: PluginProcess, out: Path) -> Path:
    document = yaml.safe_load((DEPLOY / example).read_text())
    for group in document["resources"]:
        for provider in group["providers"]:
            if "kms" in provider:
                provider["kms"]["endpoint"] = plugin.endpoint.url
    return write_config(out, document)


@pytest.mark.parametrize(
    ("example", "gates", "prefix"),
    [
        ("encryption-config-v2.yaml", (), b"k8s:enc:kms:v2:kmsplug:"),
        ("encryption-config-v1.yaml", ("KMSv1=true",), b"k8s:enc:kms:v1:kmsplug:"),
    ],
)
def test_encryption_configuration_examples_work(
    example: str,
    gates: tuple[str, ...],
    prefix: bytes,
    plugin: PluginProcess,
    bed_factory: Callable[..., ClusterBed],
    short_tmp: Path,
) -> None:
    bed = bed_factory(pointed_at(example, plugin, short_tmp / example), feature_gates=gates)
    bed.core().create_namespaced_secret(
        "default", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}
    )
    assert bed.raw("/registry/secrets/default/s").startswith(prefix)


def test_static_pod_passes_server_side_validation(
    plugin_factory: PluginFactory, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    plugin = plugin_factory()
    config = pointed_at("encryption-config-v2.yaml", plugin, short_tmp / "enc.yaml")
    bed = bed_factory(config)
    pod = yaml.safe_load((DEPLOY / "static-pod.yaml").read_text())
    core = bed.core()
    # the bed runs no controller-manager, so nothing made kube-system's default account
    core.create_namespaced_service_account("kube-system", {"metadata": {"name": "default"}})
    created = core.create_namespaced_pod("kube-system", pod, dry_run="All")
    assert created.metadata.name == "kmsplug"
    assert created.spec.priority_class_name == "system-node-critical"
    assert created.spec.containers[0].liveness_probe._exec.command[:2] == ["kmsplug", "health"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    kmsplug = shutil.which("kmsplug") or str(Path(__import__("sys").executable).parent / "kmsplug")
    unit = (DEPLOY / "kmsplug.service").read_text().replace("/usr/local/bin/kmsplug", kmsplug)
    path = tmp_path / "kmsplug.service"
    path.write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "kmsplug.service" in line and "kube-apiserver.service" not in line
    ]
    assert problems == [], result.stderr


def helm() -> str:
    out = subprocess.run(
        [str(Path(__file__).parent / "build-helm.sh")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def test_helm_chart_lints_renders_and_validates(
    plugin: PluginProcess, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    chart = DEPLOY / "helm" / "kmsplug"
    lint = subprocess.run([helm(), "lint", str(chart)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    refused = subprocess.run(
        [helm(), "template", "kmsplug", str(chart), "--set", "provider=alibaba"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "alibaba.keyId is required" in refused.stderr
    daemonset = render_daemonset(
        chart, "--set", "provider=alibaba,alibaba.keyId=alias/k8s,alibaba.region=cn-hangzhou"
    )
    args = daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--key-id=alias/k8s" in args and "--provider=alibaba" in args
    vault = render_vault(chart, short_tmp)
    bed = bed_factory(pointed_at("encryption-config-v2.yaml", plugin, short_tmp / "enc.yaml"))
    from kubernetes import client

    apps = client.AppsV1Api(bed.core().api_client)
    for manifest in (daemonset, vault):
        created = apps.create_namespaced_daemon_set("kube-system", manifest, dry_run="All")
        assert created.metadata.name == "kmsplug"


def render_daemonset(chart: Path, *values: str) -> dict[str, Any]:
    """The chart's DaemonSet, rendered into kube-system with the given value arguments."""
    command = [helm(), "template", "kmsplug", str(chart), "--namespace", "kube-system"]
    rendered = subprocess.run(
        [*command, *values], capture_output=True, text=True, check=True
    ).stdout
    (daemonset,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "DaemonSet"]
    manifest: dict[str, Any] = daemonset
    return manifest


def render_vault(chart: Path, tmp: Path) -> dict[str, Any]:
    """The chart for Vault: settings become flags `kmsplug serve` accepts, the token file
    comes from a mounted Secret, extra volumes are mounted."""
    from kmsplug.cli.serve import serve

    values = tmp / "vault-values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "provider": "vault",
                "settings": {
                    "vault-address": "https://vault.example.com:8200",
                    "vault-transit-key": "k8s",
                    "vault-token-file": "/etc/kmsplug/secrets/token",
                    "remote-deadline": 2,
                    "kek-max-seals": 16777216,  # YAML gives Helm a float: must stay an int
                    "decrypt-provider": ["aws", "pkcs11"],
                },
                "secretFiles": "kmsplug-vault",
                "secretEnv": "kmsplug-env",
                "extraVolumes": [{"name": "ca", "hostPath": {"path": "/etc/vault-ca"}}],
                "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/vault-ca"}],
            }
        )
    )
    daemonset = render_daemonset(chart, "-f", str(values))
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert "--vault-address=https://vault.example.com:8200" in args
    assert "--remote-deadline=2" in args
    with serve.make_context("kmsplug serve", list(args[1:])) as ctx:  # every flag is real
        assert ctx.params["vault_transit_key"] == "k8s" and ctx.params["remote_deadline"] == 2
        assert ctx.params["kek_max_seals"] == 16777216
        assert ctx.params["decrypt_providers"] == ("aws", "pkcs11")
    on_off = subprocess.run(
        [helm(), "template", "kmsplug", str(chart), "--set", "settings.enable-v1=false"],
        capture_output=True,
        text=True,
    )
    assert on_off.returncode != 0 and "on/off flags go in extraArgs" in on_off.stderr
    assert {"secretRef": {"name": "kmsplug-env"}} in container["envFrom"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["secret-files"] == "/etc/kmsplug/secrets" and mounts["ca"] == "/etc/vault-ca"
    (secret_volume,) = [v for v in pod["volumes"] if v["name"] == "secret-files"]
    assert secret_volume["secret"]["secretName"] == "kmsplug-vault"
    return daemonset
