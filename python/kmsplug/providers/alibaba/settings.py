"""The Alibaba provider's settings, from the environment `serve` fills from its flags.

KMSPLUG_KEY_ID                              CMK id or alias (ack's --key-id; required)
KMSPLUG_REGION / ACK_KMS_REGION_ID          region (required unless the endpoint names one)
KMSPLUG_KMS_ENDPOINT / ACK_KMS_DOMAIN       host[:port]; %s becomes the region
KMSPLUG_KMS_PROTOCOL                        https (default) | http
KMSPLUG_ENCRYPTION_CONTEXT                  JSON or a=b,c=d; set but empty: none
KMSPLUG_ALIBABA_ALLOW_SPECS                 comma-separated CMK specs besides Aliyun_AES_256
KMSPLUG_COMPAT                              none (default) | ack
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kmsplug.providers.shared import encryption_context_from, env_list, env_value

ALLOWED_SPECS_DEFAULT = ("Aliyun_AES_256",)
#: The VPC endpoint of the region, as ack-kms-plugin uses.
DEFAULT_ENDPOINT = "kms-vpc.%s.aliyuncs.com"
DEFAULT_PROTOCOL = "https"
#: Bound to every wrap; keep it stable (a different one cannot unwrap what this one wrapped).
DEFAULT_ENCRYPTION_CONTEXT = '{"kmsplug": "local-kek"}'


@dataclass(frozen=True, slots=True)
class AlibabaSettings:
    key: str
    """CMK id or alias (`alias/...`), as ack-kms-plugin's --key-id."""
    region: str
    endpoint: str = ""
    """Host[:port]; default the VPC endpoint kms-vpc.<region>.aliyuncs.com (as ack)."""
    protocol: str = DEFAULT_PROTOCOL
    encryption_context: Mapping[str, str] = field(default_factory=dict)
    allowed_specs: tuple[str, ...] = ALLOWED_SPECS_DEFAULT
    timeout_ms: int = 2000
    legacy_key_ids: tuple[str, ...] = ()
    """v2 key_ids another plugin reported for this CMK (ack reports --key-id verbatim)."""
    compat_ack: bool = False
    """Behave as ack-kms-plugin on the wire: key_id is the configured key string, and
    (with direct mode) the ciphertext is the bare CiphertextBlob, without context."""

    @property
    def host(self) -> str:
        return self.endpoint or DEFAULT_ENDPOINT.replace("%s", self.region)


def settings_from_env(env: Mapping[str, str]) -> AlibabaSettings:
    """Settings from the environment (names in the module docstring)."""
    region = env_value(env, "KMSPLUG_REGION", "ACK_KMS_REGION_ID")
    endpoint = env_value(env, "KMSPLUG_KMS_ENDPOINT", "ACK_KMS_DOMAIN", default=DEFAULT_ENDPOINT)
    context = env.get("KMSPLUG_ENCRYPTION_CONTEXT", DEFAULT_ENCRYPTION_CONTEXT)
    return AlibabaSettings(
        key=env_value(env, "KMSPLUG_KEY_ID"),
        region=region,
        endpoint=endpoint.replace("%s", region),
        protocol=env_value(env, "KMSPLUG_KMS_PROTOCOL", default=DEFAULT_PROTOCOL),
        encryption_context=encryption_context_from(context, "alibaba"),
        allowed_specs=ALLOWED_SPECS_DEFAULT + env_list(env, "KMSPLUG_ALIBABA_ALLOW_SPECS"),
        compat_ack=env_value(env, "KMSPLUG_COMPAT") == "ack",
    )
