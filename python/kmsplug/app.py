"""Wiring: settings in, a ready KeyService out (providers, envelope, service)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmsplug.encryption_config import encryption_configuration, to_yaml
from kmsplug.envelope import Envelope, RotationPolicy
from kmsplug.errors import ConfigError
from kmsplug.extras import require
from kmsplug.providers.base import RemoteKek
from kmsplug.providers.local import LocalKek
from kmsplug.providers.resilient import ResiliencePolicy, Resilient
from kmsplug.server import ServerSettings
from kmsplug.service import KeyService

if TYPE_CHECKING:
    from kmsplug.providers.alibaba import AlibabaSettings

log = logging.getLogger(__name__)


def build_service(
    *,
    key_file: Path,
    decrypt_key_files: Sequence[Path] = (),
    hierarchy: bool = True,
    policy: RotationPolicy | None = None,
    writer: RemoteKek | None = None,
    readers: Sequence[RemoteKek] = (),
    probe_interval: float = 30.0,
) -> KeyService:
    """The local key file is the writer unless another provider is given; old local key
    files and the decrypt-only `readers` (another KMS being migrated from) stay readable."""
    if writer is None:
        writer = LocalKek.open(key_file, create=True)
    readers = [*(LocalKek.open(path) for path in decrypt_key_files), *readers]
    envelope = Envelope(writer, readers, hierarchy=hierarchy, policy=policy)
    return KeyService(envelope, probe_interval=probe_interval)


PROVIDERS = ("local", "alibaba", "vault", "pkcs11", "aws")


def require_extras(names: Sequence[str]) -> None:
    """MissingExtra, naming the pip command, unless every named provider's SDK is there."""
    for name in names:
        if name != "local":
            require(name, f"the {name} provider")


def make_provider(
    name: str,
    env: Mapping[str, str],
    alibaba: AlibabaSettings | None = None,
    resilience: ResiliencePolicy | None = None,
) -> RemoteKek | None:
    """A remote provider by name (None for `local`: the key file is the provider), behind
    the resilience layer with `resilience`'s limits.

    Vault, PKCS#11 and AWS read their settings from KMSPLUG_VAULT_* / VAULT_*,
    KMSPLUG_PKCS11_* and KMSPLUG_AWS_* / AWS_* in `env` (see their modules; `serve`'s
    --vault-*, --pkcs11-* and --aws-* flags land there); Alibaba's are `alibaba`.
    """
    if name == "local":
        return None
    if name in PROVIDERS:
        require_extras([name])
    if name == "alibaba":
        if alibaba is None:
            raise ConfigError("alibaba: --key-id and --region are required")
        return alibaba_provider(alibaba, env, resilience)
    if name == "vault":
        from kmsplug.providers.vault import vault_provider, vault_settings_from_env

        return vault_provider(vault_settings_from_env(env), env, resilience)
    if name == "pkcs11":
        from kmsplug.providers.pkcs11 import pkcs11_provider, pkcs11_settings_from_env

        return pkcs11_provider(pkcs11_settings_from_env(env), env, resilience)
    if name == "aws":
        from kmsplug.providers.aws import aws_provider, aws_settings_from_env

        return aws_provider(aws_settings_from_env(env), env, resilience)
    raise ConfigError(f"unknown provider {name!r}; one of {', '.join(PROVIDERS)}")


def alibaba_provider(
    settings: AlibabaSettings,
    env: Mapping[str, str],
    resilience: ResiliencePolicy | None = None,
) -> RemoteKek:
    """The Alibaba KMS provider behind the resilience layer, credentials from `env`."""
    require("alibaba", "the alibaba provider")
    from kmsplug.providers.alibaba import AlibabaKek
    from kmsplug.providers.alibaba_credentials import credential_source, kms_client

    source = credential_source(env)
    log.info("alibaba credentials: %s", source.describe())

    def client() -> Any:
        return kms_client(
            credential_source(env),
            host=settings.host,
            region=settings.region,
            protocol=settings.protocol,
            timeout_ms=settings.timeout_ms,
        )

    return Resilient(AlibabaKek(settings, client(), rebuild=client), resilience)


def print_ready(settings: ServerSettings, provider_name: str, service: KeyService) -> None:
    """Tell the person who started us where we listen and how to point an apiserver here."""
    document = encryption_configuration(settings.endpoint, name=provider_name)
    # One write: whoever watches the output for "serving on" sees the whole block.
    sys.stdout.write(
        f"kmsplug is serving on {settings.endpoint} (key_id {service.envelope.key_id})\n"
        "EncryptionConfiguration for kube-apiserver (--encryption-provider-config):\n"
        "---\n" + to_yaml(document)
    )
    sys.stdout.flush()
