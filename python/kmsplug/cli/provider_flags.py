"""`serve`'s provider options: which providers, each provider's settings, and the
resilience limits every remote KMS call runs under.

The provider packages read their settings from an environment mapping (KMSPLUG_VAULT_*,
KMSPLUG_AWS_*, KMSPLUG_PKCS11_*, Alibaba's KMSPLUG_KEY_ID, ...), which keeps them free
of click. Each option here is one of those settings as a flag (and so as a config-file
key): a value given on the command line, in the environment or in the config file is
written under its KMSPLUG_* name into the mapping the provider reads. Click resolves
flag > environment > config file, as for every other setting.

Secrets (Vault tokens and secret_ids, the PKCS#11 PIN, cloud keys) have no flag: a
command line is readable by every local user in /proc. They come from files
(--vault-token-file, --vault-secret-id-file, --pkcs11-pin-file) or the environment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click

from kmsplug.cli.options import default_of, option
from kmsplug.providers.alibaba import settings as alibaba
from kmsplug.providers.registry import NAMES
from kmsplug.providers.resilient import ResiliencePolicy


@dataclass(frozen=True)
class ProviderSetting:
    flag: str
    variable: str
    """The KMSPLUG_* name the provider package reads."""
    help: str
    aliases: tuple[str, ...] = ()
    """Other environment names accepted, after `variable` (e.g. Vault's own VAULT_ADDR)."""
    type: Any = None
    default: str | None = None
    """Shown in --help and always written; None: written only when given."""
    multiple: bool = False
    """Repeatable; the provider reads the values comma-separated."""

    @property
    def name(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


_FILE = click.Path(dir_okay=False)

PROVIDER_SETTINGS: tuple[ProviderSetting, ...] = (
    # Alibaba Cloud KMS (ack-kms-plugin's flag and environment names)
    ProviderSetting(
        "--key-id",
        "KMSPLUG_KEY_ID",
        "alibaba: the CMK id or alias (ack-kms-plugin's --key-id).",
        default="",
    ),
    ProviderSetting(
        "--region",
        "KMSPLUG_REGION",
        "alibaba: region of the KMS (AWS: --aws-region).",
        ("ACK_KMS_REGION_ID",),
        default="",
    ),
    ProviderSetting(
        "--kms-endpoint",
        "KMSPLUG_KMS_ENDPOINT",
        "alibaba: KMS host[:port]; %s becomes the region. Public: kms.%s.aliyuncs.com; "
        "a KMS instance: <instance>.cryptoservice.kms.aliyuncs.com.",
        ("ACK_KMS_DOMAIN",),
        default=alibaba.DEFAULT_ENDPOINT,
    ),
    ProviderSetting(
        "--kms-protocol",
        "KMSPLUG_KMS_PROTOCOL",
        "",
        type=click.Choice(["https", "http"]),
        default=alibaba.DEFAULT_PROTOCOL,
    ),
    ProviderSetting(
        "--encryption-context",
        "KMSPLUG_ENCRYPTION_CONTEXT",
        "KMS EncryptionContext bound to every wrap (JSON or a=b,c=d); keep it stable.",
        default=alibaba.DEFAULT_ENCRYPTION_CONTEXT,
    ),
    ProviderSetting(
        "--alibaba-allow-spec",
        "KMSPLUG_ALIBABA_ALLOW_SPECS",
        "Accept a CMK spec other than Aliyun_AES_256 (repeatable).",
        multiple=True,
    ),
    ProviderSetting(
        "--compat",
        "KMSPLUG_COMPAT",
        "Write exactly what a peer plugin writes (direct mode, its format and key_id), so a "
        "rollback to it can read everything: ack (ack-kms-plugin, --provider alibaba), aws "
        "(aws-encryption-provider), vault (vault-kubernetes-kms).",
        type=click.Choice(["none", "ack", "aws", "vault"]),
        default="none",
    ),
    # Vault / OpenBao Transit
    ProviderSetting("--vault-address", "KMSPLUG_VAULT_ADDR", "vault: server URL.", ("VAULT_ADDR",)),
    ProviderSetting(
        "--vault-namespace", "KMSPLUG_VAULT_NAMESPACE", "vault: namespace.", ("VAULT_NAMESPACE",)
    ),
    ProviderSetting(
        "--vault-ca-cert",
        "KMSPLUG_VAULT_CACERT",
        "vault: CA bundle (PEM) for the server's TLS.",
        ("VAULT_CACERT",),
        _FILE,
    ),
    ProviderSetting(
        "--vault-transit-mount", "KMSPLUG_VAULT_TRANSIT_MOUNT", "vault: Transit mount [transit]."
    ),
    ProviderSetting("--vault-transit-key", "KMSPLUG_VAULT_TRANSIT_KEY", "vault: Transit key name."),
    ProviderSetting(
        "--vault-auth",
        "KMSPLUG_VAULT_AUTH",
        "vault: auth method [inferred from what is set].",
        type=click.Choice(["token", "approle", "kubernetes", "jwt"]),
    ),
    ProviderSetting(
        "--vault-auth-mount", "KMSPLUG_VAULT_AUTH_MOUNT", "vault: auth mount [the method's name]."
    ),
    ProviderSetting(
        "--vault-token-file",
        "KMSPLUG_VAULT_TOKEN_FILE",
        "vault: file holding the token, re-read when it changes (a token itself: VAULT_TOKEN).",
        type=_FILE,
    ),
    ProviderSetting("--vault-role-id", "KMSPLUG_VAULT_ROLE_ID", "vault: AppRole role_id."),
    ProviderSetting(
        "--vault-secret-id-file",
        "KMSPLUG_VAULT_SECRET_ID_FILE",
        "vault: file holding the AppRole secret_id.",
        type=_FILE,
    ),
    ProviderSetting("--vault-role", "KMSPLUG_VAULT_ROLE", "vault: Kubernetes / JWT auth role."),
    ProviderSetting(
        "--vault-jwt-file",
        "KMSPLUG_VAULT_JWT_FILE",
        "vault: JWT file [the pod's service-account token].",
        type=_FILE,
    ),
    ProviderSetting(
        "--vault-timeout",
        "KMSPLUG_VAULT_TIMEOUT",
        "vault: seconds per HTTP request [2].",
        type=click.FloatRange(min=0.05),
    ),
    ProviderSetting(
        "--vault-legacy-key-ids",
        "KMSPLUG_VAULT_LEGACY_KEY_IDS",
        "vault: comma-separated v2 key_ids of a previous plugin to decrypt as ours.",
    ),
    # AWS KMS
    ProviderSetting("--aws-key", "KMSPLUG_AWS_KEY", "aws: key id, key ARN or alias/<name>."),
    ProviderSetting(
        "--aws-region", "KMSPLUG_AWS_REGION", "aws: region.", ("AWS_REGION", "AWS_DEFAULT_REGION")
    ),
    ProviderSetting("--aws-endpoint", "KMSPLUG_AWS_ENDPOINT", "aws: endpoint URL override."),
    ProviderSetting(
        "--aws-encryption-context",
        "KMSPLUG_AWS_ENCRYPTION_CONTEXT",
        "aws: encryption context (JSON or a=b,c=d); keep it stable.",
    ),
    ProviderSetting(
        "--aws-timeout",
        "KMSPLUG_AWS_TIMEOUT",
        "aws: seconds per HTTP request [2].",
        type=click.FloatRange(min=0.05),
    ),
    ProviderSetting(
        "--aws-legacy-key-ids",
        "KMSPLUG_AWS_LEGACY_KEY_IDS",
        "aws: comma-separated v2 key_ids of a previous plugin to decrypt as ours.",
    ),
    # PKCS#11
    ProviderSetting(
        "--pkcs11-library", "KMSPLUG_PKCS11_LIBRARY", "pkcs11: module [SoftHSM2's].", type=_FILE
    ),
    ProviderSetting("--pkcs11-token", "KMSPLUG_PKCS11_TOKEN", "pkcs11: token label."),
    ProviderSetting("--pkcs11-key-label", "KMSPLUG_PKCS11_KEY_LABEL", "pkcs11: AES key label."),
    ProviderSetting(
        "--pkcs11-key-id", "KMSPLUG_PKCS11_KEY_ID", "pkcs11: hex CKA_ID of the write key."
    ),
    ProviderSetting(
        "--pkcs11-pin-file",
        "KMSPLUG_PKCS11_PIN_FILE",
        "pkcs11: file holding the user PIN (the PIN itself: KMSPLUG_PKCS11_PIN).",
        type=_FILE,
    ),
    ProviderSetting(
        "--pkcs11-mechanism",
        "KMSPLUG_PKCS11_MECHANISM",
        "pkcs11: wrap mechanism [aes-gcm].",
        type=click.Choice(["aes-gcm", "aes-key-wrap"]),
    ),
    ProviderSetting(
        "--pkcs11-sessions",
        "KMSPLUG_PKCS11_SESSIONS",
        "pkcs11: worker threads and sessions [2].",
        type=click.IntRange(min=1, max=64),
    ),
)

#: Every provider setting's parameter name, to pick them out of serve's parameters.
PROVIDER_SETTING_NAMES = frozenset(setting.name for setting in PROVIDER_SETTINGS)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def provider_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the provider choices, their settings and the resilience limits to a command."""
    options: list[Decorator] = [
        option(
            "--provider",
            type=click.Choice(NAMES),
            default="local",
            envvar="KMSPLUG_PROVIDER",
            help="Where the write KEK lives (vault, pkcs11, aws: their --vault-*, --pkcs11-*, "
            "--aws-* settings below; see docs/operations.md).",
        ),
        option(
            "--decrypt-provider",
            "decrypt_providers",
            type=click.Choice(NAMES),
            multiple=True,
            envvar="KMSPLUG_DECRYPT_PROVIDERS",
            help="Also decrypt what this provider wrapped (repeatable): migrating between KMSes.",
        ),
        option(
            "--remote-deadline",
            type=click.FloatRange(min=0.05, max=60),
            default=default_of(ResiliencePolicy, "deadline"),
            envvar="KMSPLUG_REMOTE_DEADLINE",
            help="Seconds for one remote KMS operation, retries included; keep it below the "
            "EncryptionConfiguration's timeout (default 3 s) so callers get an answer.",
        ),
        option(
            "--remote-rate",
            type=click.FloatRange(min=0.1),
            default=default_of(ResiliencePolicy, "rate"),
            envvar="KMSPLUG_REMOTE_RATE",
            help="Remote KMS calls per second this plugin allows itself (stay under the "
            "account's quota; bursts of up to a tenth of a second's worth).",
        ),
    ]
    for setting in PROVIDER_SETTINGS:
        options.append(
            click.option(
                setting.flag,
                setting.name,
                type=setting.type,
                default=() if setting.multiple else setting.default,
                multiple=setting.multiple,
                show_default=setting.default is not None,
                show_envvar=True,
                envvar=[setting.variable, *setting.aliases],
                help=setting.help or None,
            )
        )
    for add in reversed(options):
        command = add(command)
    return command


def provider_environment(
    values: Mapping[str, object], environ: Mapping[str, str]
) -> dict[str, str]:
    """`environ` with every provider setting that was given (flag, environment or config
    file; click already chose which wins) written under its KMSPLUG_* name, and its
    other names removed, so that a value given empty on the command line stays empty."""
    env = dict(environ)
    for setting in PROVIDER_SETTINGS:
        value = values.get(setting.name)
        if value is None or value == ():
            continue
        for alias in setting.aliases:
            env.pop(alias, None)
        env[setting.variable] = ",".join(value) if isinstance(value, tuple) else str(value)
    return env


def resilience_policy(values: Mapping[str, Any]) -> ResiliencePolicy:
    """The limits every remote provider runs under (the rest keep their defaults)."""
    rate = float(values["remote_rate"])
    return ResiliencePolicy(
        deadline=float(values["remote_deadline"]), rate=rate, burst=max(1, round(rate / 10))
    )
