"""Where the Alibaba provider gets its credentials, in one documented order.

1. `ACCESS_KEY_ID` / `ACCESS_KEY_SECRET` (ack-kms-plugin's names): a static AccessKey.
2. `ALIBABA_CLOUD_ACCESS_KEY_ID` / `ALIBABA_CLOUD_ACCESS_KEY_SECRET`, plus
   `ALIBABA_CLOUD_SECURITY_TOKEN` for an STS token.
3. `ALIBABA_CLOUD_ROLE_ARN` + `ALIBABA_CLOUD_OIDC_PROVIDER_ARN` +
   `ALIBABA_CLOUD_OIDC_TOKEN_FILE`: an OIDC role (RRSA on ACK); STS at
   `ALIBABA_CLOUD_STS_ENDPOINT` if set.
4. `ALIBABA_CLOUD_CREDENTIALS_URI`: a local credentials endpoint.
5. Otherwise the ECS instance RAM role from instance metadata (IMDSv2 token first;
   `ALIBABA_CLOUD_ECS_METADATA` names the role, else it is discovered).

Temporary credentials (2-5) are refreshed by `alibabacloud-credentials` before they
expire, on the call that finds them stale; calls in flight keep the ones they started
with. Nothing here logs or returns a secret: `describe()` names the source only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CredentialSource:
    kind: str
    """access_key, sts, oidc_role_arn, credentials_uri or ecs_ram_role."""
    config: Mapping[str, Any]

    def describe(self) -> str:
        """For logs: the kind and the non-secret identifiers only."""
        public = {k: v for k, v in self.config.items() if k in ("role_arn", "role_name")}
        if "access_key_id" in self.config:
            public["access_key_id"] = str(self.config["access_key_id"])[:6] + "..."
        return f"{self.kind} {public}" if public else self.kind


def credential_source(env: Mapping[str, str]) -> CredentialSource:
    """Pick the source by the order in this module's docstring."""
    if env.get("ACCESS_KEY_ID") and env.get("ACCESS_KEY_SECRET"):
        return CredentialSource(
            "access_key",
            {"access_key_id": env["ACCESS_KEY_ID"], "access_key_secret": env["ACCESS_KEY_SECRET"]},
        )
    ak, secret = env.get("ALIBABA_CLOUD_ACCESS_KEY_ID"), env.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    if ak and secret:
        token = env.get("ALIBABA_CLOUD_SECURITY_TOKEN")
        if token:
            return CredentialSource(
                "sts", {"access_key_id": ak, "access_key_secret": secret, "security_token": token}
            )
        return CredentialSource("access_key", {"access_key_id": ak, "access_key_secret": secret})
    role, provider, token_file = (
        env.get("ALIBABA_CLOUD_ROLE_ARN"),
        env.get("ALIBABA_CLOUD_OIDC_PROVIDER_ARN"),
        env.get("ALIBABA_CLOUD_OIDC_TOKEN_FILE"),
    )
    if role and provider and token_file:
        config: dict[str, Any] = {
            "role_arn": role,
            "oidc_provider_arn": provider,
            "oidc_token_file_path": token_file,
            "role_session_name": env.get("ALIBABA_CLOUD_ROLE_SESSION_NAME", "kmsplug"),
        }
        if env.get("ALIBABA_CLOUD_STS_ENDPOINT"):  # e.g. a VPC STS endpoint
            config["sts_endpoint"] = env["ALIBABA_CLOUD_STS_ENDPOINT"]
        return CredentialSource("oidc_role_arn", config)
    if env.get("ALIBABA_CLOUD_CREDENTIALS_URI"):
        return CredentialSource(
            "credentials_uri", {"credentials_uri": env["ALIBABA_CLOUD_CREDENTIALS_URI"]}
        )
    ecs: dict[str, Any] = {"enable_imds_v2": True}
    if env.get("ALIBABA_CLOUD_ECS_METADATA"):
        ecs["role_name"] = env["ALIBABA_CLOUD_ECS_METADATA"]
    return CredentialSource("ecs_ram_role", ecs)


def credential_client(source: CredentialSource) -> Any:
    """An `alibabacloud_credentials` client for the source (it refreshes by itself)."""
    from alibabacloud_credentials.client import Client
    from alibabacloud_credentials.models import Config

    return Client(Config(type=source.kind, **source.config))


def kms_client(
    source: CredentialSource, *, host: str, region: str, protocol: str, timeout_ms: int
) -> Any:
    """The official KMS SDK client (synchronous; keeps its connections alive)."""
    from alibabacloud_kms20160120.client import Client
    from alibabacloud_tea_openapi.utils_models import Config

    return Client(
        Config(
            credential=credential_client(source),
            endpoint=host,
            region_id=region or None,
            protocol=protocol,
            connect_timeout=timeout_ms,
            read_timeout=timeout_ms,
            max_idle_conns=64,
        )
    )
