"""Wiring: settings in, a ready KeyService out (providers, envelope, service)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from kmsplug.encryption_config import encryption_configuration, to_yaml
from kmsplug.envelope import Envelope, RotationPolicy
from kmsplug.providers.local import LocalKek
from kmsplug.server import ServerSettings
from kmsplug.service import KeyService


def build_service(
    *,
    key_file: Path,
    decrypt_key_files: Sequence[Path] = (),
    hierarchy: bool = True,
    policy: RotationPolicy | None = None,
) -> KeyService:
    writer = LocalKek.open(key_file, create=True)
    readers = [LocalKek.open(path) for path in decrypt_key_files]
    return KeyService(Envelope(writer, readers, hierarchy=hierarchy, policy=policy))


def print_ready(settings: ServerSettings, provider_name: str, service: KeyService) -> None:
    """Tell the person who started us where we listen and how to point an apiserver here."""
    document = encryption_configuration(settings.endpoint, name=provider_name)
    out = sys.stdout
    out.write(f"kmsplug is serving on {settings.endpoint} (key_id {service.envelope.key_id})\n")
    out.write("EncryptionConfiguration for kube-apiserver (--encryption-provider-config):\n")
    out.write("---\n" + to_yaml(document))
    out.flush()
