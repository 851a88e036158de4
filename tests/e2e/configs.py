"""EncryptionConfiguration files for the bed, written as `kmsplug config` prints them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from kmsplug.endpoint import Endpoint


def write_config(path: Path, document: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def identity_config(path: Path) -> Path:
    """Secrets stored unencrypted: a cluster before encryption is turned on."""
    return write_config(
        path,
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [{"resources": ["secrets"], "providers": [{"identity": {}}]}],
        },
    )


def kms_config(path: Path, endpoint: Endpoint, *args: str) -> Path:
    """Write what `kmsplug config --socket ENDPOINT ARGS...` prints to `path`."""
    out = subprocess.run(
        [sys.executable, "-m", "kmsplug", "config", "--socket", endpoint.url, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    path.write_text(out.stdout)
    return path


def merged_config(path: Path, *documents: dict[str, object]) -> Path:
    """One EncryptionConfiguration whose resource groups come from several documents."""
    resources = [group for doc in documents for group in doc["resources"]]  # type: ignore[attr-defined]
    return write_config(path, {**documents[0], "resources": resources})
