"""Smoke test of the bed: a real kube-apiserver encrypts Secrets with aesgcm into real etcd."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
import yaml

from .conftest_bed import BedFactory

pytestmark = pytest.mark.slow


def write_aesgcm_config(path: Path) -> Path:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [
                    {"aesgcm": {"keys": [{"name": "key1", "secret": key}]}},
                    {"identity": {}},
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_secret_is_encrypted_in_etcd_and_survives_restart(
    cluster_bed: BedFactory, tmp_path: Path
) -> None:
    bed = cluster_bed(write_aesgcm_config(tmp_path / "encryption.yaml"))
    plaintext = f"kmsplug-smoke-{secrets.token_hex(16)}"
    bed.kubectl("create", "secret", "generic", "smoke", f"--from-literal=value={plaintext}")

    raw = bed.etcd_get_raw("/registry/secrets/default/smoke")
    assert raw.startswith(b"k8s:enc:aesgcm:v1:key1:")
    assert plaintext.encode() not in raw
    assert base64.b64encode(plaintext.encode()) not in raw
    assert "/registry/secrets/default/smoke" in bed.etcd_list_keys("/registry/secrets/default/")

    def read_back() -> str:
        out = bed.kubectl("get", "secret", "smoke", "-o", "jsonpath={.data.value}").stdout
        return base64.b64decode(out).decode()

    assert read_back() == plaintext
    old_pid = bed.apiserver_pid
    bed.restart_apiserver()
    assert bed.apiserver_pid != old_pid
    assert read_back() == plaintext
    assert bed.etcd_get_raw("/registry/secrets/default/smoke") == raw
    status, body = bed.readyz_check("etcd")
    assert (status, body.strip()) == (200, "ok")
