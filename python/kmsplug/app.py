"""Wiring: settings in, a ready KeyService out (key file, remote providers, sealer)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from kmsplug.core import RotationPolicy
from kmsplug.encryption_config import encryption_configuration, to_yaml
from kmsplug.providers.base import KekProvider
from kmsplug.providers.local import KeyFileKek
from kmsplug.sealer import Sealer
from kmsplug.server import ServerSettings
from kmsplug.service import PROBE_INTERVAL, KeyService


def build_service(
    *,
    key_file: Path,
    decrypt_key_files: Sequence[Path] = (),
    hierarchy: bool = True,
    policy: RotationPolicy | None = None,
    writer: KekProvider | None = None,
    readers: Sequence[KekProvider] = (),
    probe_interval: float = PROBE_INTERVAL,
) -> KeyService:
    """The local key file is the writer unless another provider is given; old local key
    files and the decrypt-only `readers` (another KMS being migrated from) stay readable."""
    if writer is None:
        writer = KeyFileKek.open(key_file, create=True)
    readers = [*(KeyFileKek.open(path) for path in decrypt_key_files), *readers]
    sealer = Sealer(writer, readers, hierarchy=hierarchy, policy=policy)
    return KeyService(sealer, probe_interval=probe_interval)


def print_ready(settings: ServerSettings, provider_name: str, service: KeyService) -> None:
    """Tell the person who started us where we listen and how to point an apiserver here."""
    document = encryption_configuration(settings.endpoint, name=provider_name)
    # One write: whoever watches the output for "serving on" sees the whole block.
    sys.stdout.write(
        f"kmsplug is serving on {settings.endpoint} (key_id {service.sealer.key_id})\n"
        "EncryptionConfiguration for kube-apiserver (--encryption-provider-config):\n"
        "---\n" + to_yaml(document)
    )
    sys.stdout.flush()
