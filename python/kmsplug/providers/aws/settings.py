"""The AWS provider's settings, from the environment `serve` fills from its flags.

KMSPLUG_AWS_KEY                             key id, key ARN or alias/<name> (required)
KMSPLUG_AWS_REGION / AWS_REGION / AWS_DEFAULT_REGION
KMSPLUG_AWS_ENDPOINT                        endpoint URL override
KMSPLUG_AWS_ENCRYPTION_CONTEXT              JSON or a=b,c=d
KMSPLUG_AWS_TIMEOUT                         seconds per HTTP call (default 2)
KMSPLUG_AWS_LEGACY_KEY_IDS                  comma-separated v2 key_ids of a previous plugin
KMSPLUG_COMPAT                              aws: write aws-encryption-provider's format
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kmsplug.errors import ConfigError
from kmsplug.providers.shared import encryption_context_from, env_list, env_seconds, env_value


@dataclass(frozen=True, slots=True)
class AwsSettings:
    key: str
    """Key id, key ARN or alias (`alias/...`), as aws-encryption-provider's --key."""
    region: str = ""
    endpoint_url: str = ""
    """A KMS endpoint other than the region's (VPC endpoint, FIPS, an emulator)."""
    encryption_context: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 2.0
    """Connect and read timeout of one HTTP call, in seconds."""
    legacy_key_ids: tuple[str, ...] = ()
    """v2 key_ids another plugin reported for this key (besides `key` itself)."""
    compat_aws: bool = False
    """Write exactly what aws-encryption-provider writes, under its key_id (`key`)."""


def settings_from_env(env: Mapping[str, str]) -> AwsSettings:
    """Settings from the environment (names in the module docstring)."""
    key = env_value(env, "KMSPLUG_AWS_KEY")
    if not key:
        raise ConfigError(
            "aws: set --aws-key (KMSPLUG_AWS_KEY) to the key id, key ARN or alias/<name>"
        )
    return AwsSettings(
        key=key,
        region=env_value(env, "KMSPLUG_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        endpoint_url=env_value(env, "KMSPLUG_AWS_ENDPOINT"),
        encryption_context=encryption_context_from(
            env_value(env, "KMSPLUG_AWS_ENCRYPTION_CONTEXT"), "aws"
        ),
        timeout=env_seconds(env, "KMSPLUG_AWS_TIMEOUT", "aws", 2.0),
        legacy_key_ids=env_list(env, "KMSPLUG_AWS_LEGACY_KEY_IDS"),
        compat_aws=env_value(env, "KMSPLUG_COMPAT") == "aws",
    )
