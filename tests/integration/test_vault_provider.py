"""The Vault provider against a real OpenBao dev server (tests/vault/devserver.py).

Real Transit keys, versions, rotation, policies, token TTLs, AppRole and JWT logins, seal
and rate-limit quotas; each test gets its own server on a free 127.0.0.1 port (~0.15 s).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from kmsplug.core import MODE_DIRECT, peek
from kmsplug.errors import (
    ConfigError,
    InvalidCiphertext,
    ProviderRefused,
    ProviderThrottled,
    ProviderTransient,
    ProviderUnavailable,
    UnknownKeyId,
)
from kmsplug.providers.resilient import ResiliencePolicy, Resilient
from kmsplug.providers.vault.settings import VaultSettings, settings_from_env
from kmsplug.providers.vault.transit import VaultKek, build
from kmsplug.sealer import Sealer

from vault.devserver import DevServer
from vault.jwt import JwtIssuer

pytestmark = pytest.mark.anyio

Make = Callable[..., Resilient]


@pytest.fixture
def bao(short_tmp: Path) -> Iterator[DevServer]:
    server = DevServer(short_tmp).start()
    server.enable_transit()
    yield server
    server.stop()


@pytest.fixture
async def make(bao: DevServer) -> AsyncIterator[Make]:
    """Build providers (root token unless told otherwise); all are closed at teardown."""
    made: list[Resilient] = []

    def factory(
        key: str,
        *,
        server: DevServer | None = None,
        token: str | None = None,
        env: dict[str, str] | None = None,
        resilience: ResiliencePolicy | None = None,
        **fields: Any,
    ) -> Resilient:
        server = server or bao
        settings = VaultSettings(address=server.address, key=key, **fields)
        if env is None:
            env = {"VAULT_TOKEN": token or server.root_token}
        kek = Resilient(build(settings, env), resilience)
        made.append(kek)
        return kek

    yield factory
    for kek in made:
        await kek.aclose()


def inner(kek: Resilient) -> VaultKek:
    assert isinstance(kek.inner, VaultKek)
    return kek.inner


async def test_round_trip_preflight_and_key_id(bao: DevServer, make: Make) -> None:
    key = bao.create_key("k8s")
    kek = make(key)
    lines = await kek.preflight()
    assert kek.key_id == "vault:transit/k8s:v1"
    assert "aes256-gcm96" in lines[0] and "version 1" in lines[0]
    dek = secrets.token_bytes(32)
    wrapped = await kek.wrap(dek)
    assert wrapped.startswith(b"vault:v1:") and dek not in base64.b64decode(wrapped[9:])
    assert await kek.unwrap(wrapped) == dek
    await kek.health()
    assert kek.owns("vault:transit/k8s:v9") and not kek.owns("vault:transit/other:v1")
    assert not kek.owns("vault:transit/k8s:v1_001")  # a derived key_id we never issued
    with pytest.raises(InvalidCiphertext):
        await kek.unwrap(b"vault:v1:" + base64.b64encode(os.urandom(44)))
    with pytest.raises(InvalidCiphertext):
        await kek.unwrap(b"\x00not transit")


async def test_key_id_follows_rotation(bao: DevServer, make: Make) -> None:
    key = bao.create_key("k8s")
    kek = make(key)
    await kek.preflight()
    dek = secrets.token_bytes(32)
    old = await kek.wrap(dek)
    assert bao.rotate(key) == 2
    assert kek.key_id == "vault:transit/k8s:v1"  # not seen yet
    await kek.refresh()
    assert kek.key_id == "vault:transit/k8s:v2"
    assert (await kek.wrap(dek)).startswith(b"vault:v2:")
    assert await kek.unwrap(old) == dek  # old versions keep decrypting
    bao.rotate(key)
    await kek.wrap(dek)  # encrypt reports the version it used: the key_id moves with it
    assert kek.key_id == "vault:transit/k8s:v3"


async def test_min_decryption_version_refuses_old_ciphertext(bao: DevServer, make: Make) -> None:
    key = bao.create_key("k8s")
    kek = make(key)
    dek = secrets.token_bytes(32)
    old = await kek.wrap(dek)
    bao.rotate(key)
    bao.configure_key(key, min_decryption_version=2)
    with pytest.raises(ProviderRefused, match="min_decryption_version") as refused:
        await kek.unwrap(old)
    assert "kmsplug migrate" in str(refused.value)
    assert kek.stats.retries == 0  # a refusal is never retried
    assert await kek.unwrap(await kek.wrap(dek)) == dek


async def test_preflight_refuses_unusable_keys(bao: DevServer, make: Make) -> None:
    bao.create_key("rsa", "rsa-2048")
    with pytest.raises(ProviderRefused, match="key type is rsa-2048"):
        await make("rsa").preflight()
    bao.create_key("derived", derived=True)
    with pytest.raises(ProviderRefused, match="derived"):
        await make("derived").preflight()
    with pytest.raises(ProviderRefused, match="not found"):
        await make("missing").preflight()
    with pytest.raises(ProviderRefused, match="not found"):
        await make("k8s", mount="nowhere").preflight()
    bao.create_key("chacha", "chacha20-poly1305")
    assert "chacha20-poly1305" in (await make("chacha").preflight())[0]


async def test_token_is_renewed_before_it_expires(
    bao: DevServer, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = bao.create_key("k8s")
    token = bao.token(bao.transit_policy("kms", key), ttl="2s", explicit_max_ttl="60s")
    kek = make(key, token=token)
    lines = await kek.preflight()
    assert "renewable" in lines[1]
    await anyio.sleep(3.0)  # idle past the token's original TTL: the renewer kept it alive
    dek = secrets.token_bytes(32)
    assert await kek.unwrap(await kek.wrap(dek)) == dek
    assert inner(kek).auth.renewals >= 2 and inner(kek).auth.logins == 0
    seen = bao.lookup(token)  # still alive, renewed after its first TTL had run out
    assert seen["last_renewal_time"] - seen["creation_time"] >= 2
    assert token not in caplog.text and token not in repr(inner(kek).settings)


async def test_token_file_is_reread_when_vault_forgets_the_token(
    bao: DevServer, make: Make, short_tmp: Path
) -> None:
    key = bao.create_key("k8s")
    policy = bao.transit_policy("kms", key)
    first = bao.token(policy)
    token_file = short_tmp / "vault-token"
    token_file.write_text(first + "\n")
    kek = make(key, env={}, token_file=str(token_file))
    await kek.preflight()
    second = bao.token(policy)
    token_file.write_text(second)  # e.g. a Vault Agent sink wrote a new token
    bao.revoke(first)
    dek = secrets.token_bytes(32)
    assert await kek.unwrap(await kek.wrap(dek)) == dek
    bao.revoke(second)
    with pytest.raises(ProviderRefused, match="refused the token") as refused:
        await kek.wrap(dek)
    assert second not in str(refused.value)


async def test_approle_login_and_login_again_at_max_ttl(
    bao: DevServer, make: Make, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = bao.create_key("k8s")
    policy = bao.transit_policy("kms", key)
    role_id, secret_id = bao.approle("kmsplug", policy, ttl="2s", max_ttl="3s")
    secret_file = short_tmp / "secret-id"
    secret_file.write_text(secret_id)
    kek = make(key, env={}, role_id=role_id, secret_id_file=str(secret_file))
    lines = await kek.preflight()
    assert "approle at auth/approle" in lines[1]
    await anyio.sleep(3.5)  # past the max TTL: renewal is capped, so it logs in again
    dek = secrets.token_bytes(32)
    assert await kek.unwrap(await kek.wrap(dek)) == dek
    assert inner(kek).auth.logins >= 2
    assert secret_id not in caplog.text and role_id not in repr(inner(kek).settings)
    bogus = "not-the-secret-id"
    wrong = make(key, env={}, role_id=role_id, secret_id=bogus)
    with pytest.raises(ProviderRefused, match="approle login") as refused:
        await wrong.preflight()
    assert bogus not in str(refused.value)


async def test_jwt_login(bao: DevServer, make: Make, short_tmp: Path) -> None:
    key = bao.create_key("k8s")
    policy = bao.transit_policy("kms", key)
    issuer = JwtIssuer()
    bao.api("POST", "sys/auth/jwt", {"type": "jwt"})
    bao.api("POST", "auth/jwt/config", {"jwt_validation_pubkeys": [issuer.public_pem()]})
    bao.api(
        "POST",
        "auth/jwt/role/kmsplug",
        {
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "user_claim": "sub",
            "token_policies": [policy],
            "token_ttl": "60s",
        },
    )
    jwt_file = short_tmp / "sa-token"
    jwt_file.write_text(issuer.token("system:serviceaccount:kube-system:kmsplug", "vault"))
    kek = make(key, env={}, auth="jwt", role="kmsplug", jwt_file=str(jwt_file))
    lines = await kek.preflight()
    assert "jwt at auth/jwt" in lines[1]
    jwt_file.write_text(issuer.token("system:serviceaccount:kube-system:kmsplug", "other"))
    with pytest.raises(ProviderRefused, match="jwt login at auth/jwt refused"):
        await make(key, env={}, auth="jwt", role="kmsplug", jwt_file=str(jwt_file)).preflight()


async def test_missing_capability_is_refused_with_the_capability_named(
    bao: DevServer, make: Make
) -> None:
    key = bao.create_key("k8s")
    token = bao.token(bao.transit_policy("encrypt-only", key, decrypt=False))
    kek = make(key, token=token)
    wrapped = await kek.wrap(secrets.token_bytes(32))
    with pytest.raises(ProviderRefused, match=f'"update" on "transit/decrypt/{key}"') as refused:
        await kek.unwrap(wrapped)
    assert token not in str(refused.value)
    bogus = "s.NotARealTokenAtAll0000000"
    with pytest.raises(ProviderRefused, match="refused the token") as refused:
        await make(key, token=bogus).preflight()
    assert bogus not in str(refused.value)


async def test_stopped_server_is_unavailable_within_the_deadline(
    bao: DevServer, make: Make
) -> None:
    key = bao.create_key("k8s")
    kek = make(key, resilience=ResiliencePolicy(deadline=0.5, backoff_base=0.02))
    await kek.preflight()
    bao.stop()
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as unavailable:
        await kek.wrap(secrets.token_bytes(32))
    assert time.monotonic() - started < 1.0
    assert isinstance(unavailable.value.__cause__, ProviderTransient)
    assert kek.stats.retries >= 1


async def test_sealed_server_is_transient_and_recovers(bao: DevServer, make: Make) -> None:
    key = bao.create_key("k8s")
    kek = make(key, resilience=ResiliencePolicy(deadline=0.5))
    await kek.preflight()
    bao.seal()
    with pytest.raises(ProviderUnavailable) as unavailable:
        await kek.health()
    assert "sealed" in str(unavailable.value.__cause__)
    bao.unseal()
    await kek.health()


async def test_rate_limit_quota_is_throttling(bao: DevServer, make: Make) -> None:
    key = bao.create_key("k8s")
    kek = make(key, resilience=ResiliencePolicy(deadline=0.3, max_attempts=2))
    await kek.preflight()
    bao.rate_limit("kms", "transit/", rate=2)
    causes = []
    for _ in range(6):
        try:
            await kek.wrap(secrets.token_bytes(32))
        except ProviderUnavailable as exc:
            causes.append(exc.__cause__)
    assert causes and all(isinstance(cause, ProviderThrottled) for cause in causes)
    assert kek.stats.throttled > 0


async def test_vault_kubernetes_kms_ciphertexts_open_through_the_envelope(
    bao: DevServer, make: Make
) -> None:
    key = bao.create_key("kms")  # vault-kubernetes-kms' default key name
    dek = secrets.token_bytes(32)
    legacy = bao.encrypt(key, dek).encode()  # what vault-kubernetes-kms stored
    sealer = Sealer(make(key))
    await sealer.start()
    assert await sealer.open(legacy) == dek  # KMS v1: no key_id
    assert await sealer.open(legacy, "1") == dek  # KMS v2: key_id = latest_version
    with pytest.raises(InvalidCiphertext):
        await sealer.open(b"vault:v1:" + base64.b64encode(os.urandom(60)), "1")
    strict = Sealer(make(key, legacy_version_key_ids=False, legacy_key_ids=("kms-old",)))
    await strict.start()
    with pytest.raises(UnknownKeyId):
        await strict.open(legacy, "1")
    assert await strict.open(legacy, "kms-old") == dek
    # --compat vault writes Transit text under the bare version, as vault-kubernetes-kms,
    # so a rollback to it reads everything.
    compat = Sealer(make(key, compat_vault=True), hierarchy=False)
    ciphertext, key_id = await compat.seal(dek)
    assert key_id == "1" and ciphertext.startswith(b"vault:v1:")
    decrypted = bao.api("POST", f"transit/decrypt/{key}", {"ciphertext": ciphertext.decode()})
    assert base64.b64decode(decrypted["data"]["plaintext"]) == dek
    assert await compat.open(ciphertext, key_id) == dek


async def test_direct_mode_frames_transit_text_and_older_bare_text_still_opens(
    bao: DevServer, make: Make
) -> None:
    """kmsplug's own direct mode frames the Transit text (mode 2, key_id checked); what it
    wrote before the frame (the bare text, under vault:<mount>/<key>:vN) still opens."""
    key = bao.create_key("framed")
    dek = secrets.token_bytes(32)
    direct = Sealer(make(key), hierarchy=False)
    ciphertext, key_id = await direct.seal(dek)
    mode, embedded, wrapped = peek(ciphertext)
    assert (mode, embedded, key_id) == (MODE_DIRECT, f"vault:transit/{key}:v1", embedded)
    assert wrapped.startswith(b"vault:v1:")
    assert await direct.open(ciphertext, key_id) == dek
    assert await direct.open(ciphertext) == dek
    with pytest.raises((InvalidCiphertext, UnknownKeyId)):
        await direct.open(ciphertext, "1")  # a key_id it was not sealed under
    older = bao.encrypt(key, dek).encode()  # kmsplug's direct mode before the frame
    assert await direct.open(older, key_id) == dek


async def test_hierarchy_makes_one_transit_call_for_1000_deks(
    bao: DevServer, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kmsplug.audit")
    key = bao.create_key("k8s")

    def transit_calls(operation: str) -> int:
        return sum(
            1
            for record in caplog.records
            if record.name == "kmsplug.audit" and getattr(record, "operation", "") == operation
        )

    sealer = Sealer(make(key))
    await sealer.start()
    deks = [secrets.token_bytes(32) for _ in range(1000)]
    sealed = [(await sealer.seal(dek))[0] for dek in deks]
    assert transit_calls("wrap") == 1  # the local KEK, wrapped once at start
    restarted = Sealer(make(key))
    caplog.clear()
    opened = [await restarted.open(ciphertext) for ciphertext in sealed]
    assert opened == deks
    assert transit_calls("unwrap") == 1  # one cold unwrap for all of that KEK's DEKs


async def test_namespace_and_tls_ca_bundle(make: Make, short_tmp: Path) -> None:
    workdir = short_tmp / "tls"
    workdir.mkdir()
    server = DevServer(workdir, tls=True).start()
    try:
        server.api("POST", "sys/namespaces/team")
        server.enable_transit(namespace="team")
        server.api("POST", "transit/keys/k8s", {}, namespace="team")
        ca = str(server.ca_cert)
        kek = make("k8s", server=server, namespace="team", ca_cert=ca)
        await kek.preflight()
        dek = secrets.token_bytes(32)
        assert await kek.unwrap(await kek.wrap(dek)) == dek
        with pytest.raises(ProviderRefused, match="--vault-ca-cert"):
            await make("k8s", server=server, namespace="team").preflight()
        with pytest.raises(ProviderRefused, match="not found"):  # not in the root namespace
            await make("k8s", server=server, ca_cert=ca).preflight()
    finally:
        server.stop()


async def test_settings_from_env_and_secrets_stay_out_of_reprs() -> None:
    env = {
        "VAULT_ADDR": "https://vault.example:8200",
        "VAULT_TOKEN": "s.very-secret-token",
        "VAULT_NAMESPACE": "team",
        "KMSPLUG_VAULT_NAMESPACE": "ops",
        "VAULT_CACERT": "",
        "KMSPLUG_VAULT_TRANSIT_MOUNT": "kms/transit",
        "KMSPLUG_VAULT_TRANSIT_KEY": "k8s",
        "KMSPLUG_VAULT_TIMEOUT": "1.5",
        "KMSPLUG_VAULT_LEGACY_KEY_IDS": "kms, old",
    }
    settings = settings_from_env(env)
    assert (settings.namespace, settings.mount, settings.timeout) == ("ops", "kms/transit", 1.5)
    assert settings.method == "token" and settings.legacy_key_ids == ("kms", "old")
    assert "s.very-secret-token" not in repr(settings)
    approle = settings_from_env(
        {**env, "KMSPLUG_VAULT_ROLE_ID": "role-1", "KMSPLUG_VAULT_SECRET_ID": "sid-secret"}
    )
    assert approle.method == "approle" and "sid-secret" not in repr(approle)
    with pytest.raises(ConfigError, match="VAULT_ADDR"):
        settings_from_env({"KMSPLUG_VAULT_TRANSIT_KEY": "k8s"})
    with pytest.raises(ConfigError, match="--vault-transit-key"):
        settings_from_env({"VAULT_ADDR": "http://127.0.0.1:8200"})
    with pytest.raises(ConfigError, match="credentials"):
        VaultKek(VaultSettings(address="http://127.0.0.1:8200", key="k8s"))
    with pytest.raises(ConfigError, match="KMSPLUG_VAULT_ROLE"):
        VaultKek(VaultSettings(address="http://127.0.0.1:8200", key="k8s", auth="kubernetes"))
    kek = VaultKek(settings)
    try:
        assert kek.key_id == "vault:kms/transit/k8s:unknown"
        assert kek.owns("1") and kek.owns("17") and kek.owns("old") and not kek.owns("k8s")
        assert kek.claims_legacy(b"vault:v2:" + base64.b64encode(os.urandom(40)))
        assert not kek.claims_legacy(b"k8s:v1:abcd") and not kek.claims_legacy(os.urandom(60))
    finally:
        await kek.aclose()
