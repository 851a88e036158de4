"""Build kmsplug's Alibaba provider against a running FakeAlibabaKms (tests only)."""

from __future__ import annotations

from kmsplug.providers.alibaba.kek import build
from kmsplug.providers.alibaba.settings import AlibabaSettings
from kmsplug.providers.base import KekProvider
from kmsplug.providers.resilient import ResiliencePolicy, Resilient

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
) -> KekProvider:
    kek = build(
        AlibabaSettings(
            key=key,
            region=fake.region,
            endpoint=fake.host,
            protocol="http",
            encryption_context={"kmsplug": "local-kek"},
            **settings,  # type: ignore[arg-type]
        ),
        env or env_for(fake),
    )
    return Resilient(kek, policy)
