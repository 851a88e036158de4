"""Build kmsplug's Alibaba provider against a running FakeAlibabaKms (tests only)."""

from __future__ import annotations

from kmsplug.app import alibaba_provider
from kmsplug.providers.alibaba import AlibabaSettings
from kmsplug.providers.base import RemoteKek
from kmsplug.providers.resilient import ResiliencePolicy

from fakes.alibaba_kms import FakeAlibabaKms


def env_for(fake: FakeAlibabaKms, **kwargs: object) -> dict[str, str]:
    key = fake.add_access_key(**kwargs)  # type: ignore[arg-type]
    return {"ACCESS_KEY_ID": key.access_key_id, "ACCESS_KEY_SECRET": key.access_key_secret}


def provider(
    fake: FakeAlibabaKms,
    key: str,
    env: dict[str, str] | None = None,
    policy: ResiliencePolicy | None = None,
    **settings: object,
) -> RemoteKek:
    return alibaba_provider(
        AlibabaSettings(
            key=key,
            region=fake.region,
            endpoint=fake.host,
            protocol="http",
            encryption_context={"kmsplug": "local-kek"},
            **settings,  # type: ignore[arg-type]
        ),
        env or env_for(fake),
        policy,
    )
