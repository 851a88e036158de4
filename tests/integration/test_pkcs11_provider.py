"""The PKCS#11 provider against a real SoftHSM2 token (tests/hsm/install-deps.sh).

Every test module run makes its own tokens in a temporary SOFTHSM2_CONF; keys are made
inside the token from another process (tests/hsm/token_tool.py), as an operator does.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from kmsplug.errors import ConfigError, InvalidCiphertext, ProviderRefused, ProviderUnavailable
from kmsplug.providers.base import KekProvider
from kmsplug.providers.pkcs11 import provider as pkcs11_provider
from kmsplug.providers.pkcs11 import session as pkcs11_session
from kmsplug.providers.pkcs11.provider import Pkcs11Kek
from kmsplug.providers.pkcs11.settings import Pkcs11Settings, settings_from_env
from kmsplug.providers.resilient import ResiliencePolicy, Resilient
from kmsplug.sealer import Sealer

from hsm.softhsm import LIBRARY, SoftHsm, ensure_installed

pytestmark = pytest.mark.anyio

# Labels and PINs of throw-away SoftHSM2 tokens made for this module only.
TOKEN = "kmsplug-test"  # noqa: S105
PIN = "user-pin-4821"
PIN_TOKEN = "kmsplug-pin"  # noqa: S105 - the wrong-PIN test's token, its login its own
PIN_TOKEN_PIN = "right-pin-7730"  # noqa: S105


@pytest.fixture(scope="module")
def hsm() -> Iterator[SoftHsm]:
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="kmsplug-hsm-"))
    soft = SoftHsm(root).create()
    soft.init_token(TOKEN, PIN)
    soft.init_token(PIN_TOKEN, PIN_TOKEN_PIN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(soft.conf))
        import pkcs11

        if LIBRARY in pkcs11._loaded:  # loaded under another conf: read ours
            pkcs11._loaded[LIBRARY].reinitialize()
        yield soft
    shutil.rmtree(root, ignore_errors=True)


Make = Callable[..., KekProvider]


@pytest.fixture
async def make(hsm: SoftHsm, tmp_path: Path) -> AsyncIterator[Make]:
    """Build providers (Resilient around Pkcs11Kek); every one is closed at teardown."""
    made: list[KekProvider] = []
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")

    def build(label: str, policy: ResiliencePolicy | None = None, **fields: Any) -> KekProvider:
        settings = Pkcs11Settings(
            token_label=TOKEN, key_label=label, library=LIBRARY, pin_file=str(pin_file)
        )
        provider = Resilient(pkcs11_provider.build(replace(settings, **fields), {}), policy)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


def new_label() -> str:
    return f"k8s-{uuid.uuid4().hex[:8]}"


def inner(provider: KekProvider) -> Pkcs11Kek:
    assert isinstance(provider, Resilient) and isinstance(provider.inner, Pkcs11Kek)
    return provider.inner


@pytest.mark.parametrize("mechanism", ["aes-gcm", "aes-key-wrap"])
async def test_round_trip_both_mechanisms(hsm: SoftHsm, make: Make, mechanism: str) -> None:
    label = new_label()
    hsm.keygen(TOKEN, PIN, label, "01")
    kek = make(label, mechanism=mechanism)
    lines = await kek.preflight()
    key_id = kek.key_id
    assert key_id.startswith(f"pkcs11:{TOKEN}/{label}:") and len(key_id.rsplit(":", 1)[1]) == 16
    assert key_id in lines[0] and ("GCM" if mechanism == "aes-gcm" else "KEY_WRAP") in lines[0]
    secret = secrets.token_bytes(32)
    wrapped = await kek.wrap(secret)
    assert wrapped[0] == (1 if mechanism == "aes-gcm" else 2) and secret not in wrapped
    assert await kek.unwrap(wrapped) == secret
    # GCM draws a fresh IV every time; key wrap (RFC 5649) is deterministic by design.
    assert (await kek.wrap(secret) != wrapped) == (mechanism == "aes-gcm")
    assert await kek.unwrap(await kek.wrap(b"x")) == b"x"
    # The mechanism byte lets a provider of either mechanism open both formats.
    other = make(label, mechanism="aes-key-wrap" if mechanism == "aes-gcm" else "aes-gcm")
    await other.preflight()
    assert other.key_id == key_id
    assert await other.unwrap(wrapped) == secret
    await kek.health()


async def test_wrong_pin_is_refused_never_retried_never_shown(
    hsm: SoftHsm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hsm.keygen(PIN_TOKEN, PIN_TOKEN_PIN, "pin-test", "01")
    wrong = "wrong-pin-5119"
    pin_file = tmp_path / "pin"
    pin_file.write_text(wrong)
    settings = Pkcs11Settings(
        token_label=PIN_TOKEN, key_label="pin-test", library=LIBRARY, pin_file=str(pin_file)
    )
    kek = Resilient(pkcs11_provider.build(settings, {}))
    try:
        with pytest.raises(ProviderRefused, match="PIN rejected") as first:
            await kek.preflight()
        with pytest.raises(ProviderRefused, match="not tried again") as second:
            await kek.wrap(b"k" * 32)  # the same PIN again: refused without a login
        pin_file.write_text(PIN_TOKEN_PIN + "\n")  # the operator fixes the PIN file
        await kek.preflight()
        assert await kek.unwrap(await kek.wrap(b"k" * 32)) == b"k" * 32
    finally:
        await kek.aclose()
    env_kek = Resilient(
        pkcs11_provider.build(
            replace(settings, pin_file="", pin_env="HSM_PIN"), {"HSM_PIN": PIN_TOKEN_PIN}
        )
    )
    try:
        await env_kek.preflight()
        assert "HSM_PIN" in repr(inner(env_kek)._pin) and PIN_TOKEN_PIN not in repr(env_kek)
    finally:
        await env_kek.aclose()
    for text in (str(first.value), str(second.value), caplog.text, repr(settings)):
        assert wrong not in text and PIN_TOKEN_PIN not in text


async def test_missing_ambiguous_and_unusable_keys_are_refused(hsm: SoftHsm, make: Make) -> None:
    label = new_label()
    with pytest.raises(ProviderRefused, match=f"no AES key labelled '{label}' in token"):
        await make(label).preflight()
    hsm.keygen(TOKEN, PIN, label, "07")
    hsm.keygen(TOKEN, PIN, label, "07")  # same label, same CKA_ID: no single writer
    with pytest.raises(ProviderRefused, match="highest CKA_ID"):
        await make(label).preflight()
    with pytest.raises(ProviderRefused, match="share CKA_ID 07"):
        await make(label, key_id_hex="07").preflight()
    hsm.keygen(TOKEN, PIN, label, "03")
    pinned = make(label, key_id_hex="03")
    await pinned.preflight()
    keys = inner(pinned).keys
    assert len(keys) == 3
    assert pinned.key_id == next(key.key_id for key in keys if key.cka_id == b"\x03")
    assert await pinned.unwrap(await pinned.wrap(b"d" * 32)) == b"d" * 32
    locked = new_label()
    hsm.keygen(TOKEN, PIN, locked, "01", encrypt=False)
    with pytest.raises(ProviderRefused, match="lacks CKA_ENCRYPT, CKA_DECRYPT"):
        await make(locked).preflight()
    await make(locked, mechanism="aes-key-wrap").preflight()  # CKA_WRAP is enough for it
    with pytest.raises(ProviderRefused, match="no token labelled 'no-such-token'"):
        await make(label, token_label="no-such-token").preflight()  # noqa: S106


async def test_rotation_by_label(hsm: SoftHsm, make: Make) -> None:
    label = new_label()
    hsm.keygen(TOKEN, PIN, label, "01")
    kek = make(label)
    await kek.preflight()
    old_id = kek.key_id
    sealer = Sealer(kek)
    await sealer.start()
    dek = secrets.token_bytes(32)
    sealed_old, stamped = await sealer.seal(dek)
    assert stamped == old_id
    wrapped_old = await kek.wrap(dek)
    hsm.keygen(TOKEN, PIN, label, "02")  # the operator's rotation: same label, higher CKA_ID
    assert await kek.unwrap(await kek.wrap(dek)) == dek and kek.key_id == old_id
    await kek.refresh()
    new_id = kek.key_id
    assert new_id != old_id and new_id.startswith(f"pkcs11:{TOKEN}/{label}:")
    assert kek.owns(old_id) and kek.owns(new_id) and not kek.owns(f"pkcs11:{TOKEN}/other:00")
    wrapped_new = await kek.wrap(dek)
    assert wrapped_new[1:9] != wrapped_old[1:9]  # the new key's fingerprint
    assert await kek.unwrap(wrapped_old) == dek and await kek.unwrap(wrapped_new) == dek
    assert sealer.needs_rotation()  # the remote key moved: a new local KEK under it
    await sealer.rotate()
    sealed_new, stamped = await sealer.seal(dek)
    assert stamped == new_id
    # A restarted plugin (cold cache) opens what both keys sealed.
    restarted = Sealer(make(label))
    await restarted.start()
    assert restarted.key_id == new_id
    assert await restarted.open(sealed_old, old_id) == dek
    assert await restarted.open(sealed_new, new_id) == dek


async def test_tampered_blobs_are_invalid_ciphertext(hsm: SoftHsm, make: Make) -> None:
    label = new_label()
    hsm.keygen(TOKEN, PIN, label, "01")
    for mechanism in ("aes-gcm", "aes-key-wrap"):
        kek = make(label, mechanism=mechanism)
        await kek.preflight()
        wrapped = await kek.wrap(secrets.token_bytes(32))
        positions = {0, 1, 8, 9, 20, len(wrapped) // 2, len(wrapped) - 1}
        for position in sorted(positions):
            tampered = bytearray(wrapped)
            tampered[position] ^= 0x01
            with pytest.raises(InvalidCiphertext):
                await kek.unwrap(bytes(tampered))
        for blob in (wrapped[:-1], wrapped[:10], b"", os.urandom(len(wrapped))):
            with pytest.raises(InvalidCiphertext):
                await kek.unwrap(blob)
        assert isinstance(kek, Resilient)
        assert kek.stats.retries == 0  # a bad blob is the caller's fault: never retried
    gcm = make(label)
    sealer = Sealer(gcm)
    await sealer.start()
    sealed, key_id = await sealer.seal(b"d" * 32)
    cold = Sealer(make(label))
    await cold.start()
    tampered = bytearray(sealed)
    tampered[-40] ^= 0x80  # inside the wrapped local KEK
    with pytest.raises(InvalidCiphertext):
        await cold.open(bytes(tampered), key_id)
    assert await cold.open(sealed, key_id) == b"d" * 32


async def test_reference_mock_ciphertexts_open(hsm: SoftHsm, make: Make) -> None:
    # Exactly as the mock's init container: pkcs11-tool --keygen --label kms-test.
    hsm.keygen_like_the_mock(TOKEN, PIN, "kms-test")
    dek = secrets.token_bytes(32)
    legacy = hsm.mock_encrypt(TOKEN, PIN, "kms-test", dek)
    assert len(legacy) == 12 + 32 + 16
    kek = make("kms-test")
    await kek.preflight()
    assert kek.owns("kms-test") and kek.claims_legacy(legacy)
    sealer = Sealer(kek)
    await sealer.start()
    assert sealer.knows("kms-test")
    assert await sealer.open(legacy, "kms-test") == dek
    # Narrow claims: another plugin's text ciphertext of that size, or another size, is
    # left to the provider it belongs to (the first provider to claim one decrypts it).
    assert not kek.claims_legacy(base64.b64encode(os.urandom(45)))  # 60 bytes of text
    longer = hsm.mock_encrypt(TOKEN, PIN, "kms-test", b"seed" * 20)
    assert not kek.claims_legacy(longer)
    assert await inner(kek).unwrap_legacy(longer) == b"seed" * 20  # still its format
    tampered = bytearray(legacy)
    tampered[20] ^= 0x04
    with pytest.raises(InvalidCiphertext):
        await sealer.open(bytes(tampered), "kms-test")
    with pytest.raises(InvalidCiphertext):
        await sealer.open(os.urandom(60), "kms-test")
    # New writes are kmsplug's; direct mode (no hierarchy) round trips as well.
    sealed, key_id = await sealer.seal(dek)
    assert key_id == kek.key_id != "kms-test" and await sealer.open(sealed, key_id) == dek
    direct = Sealer(kek, hierarchy=False)
    sealed, key_id = await direct.seal(dek)
    assert await direct.open(sealed, key_id) == dek
    assert await direct.open(legacy, "kms-test") == dek


async def test_hierarchy_costs_one_hsm_wrap_and_logs_no_pin(
    hsm: SoftHsm, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    label = new_label()
    hsm.keygen(TOKEN, PIN, label, "01")
    kek = make(label)
    await kek.preflight()
    assert isinstance(kek, Resilient)
    kek.stats.calls.clear()
    caplog.clear()
    sealer = Sealer(kek)
    await sealer.start()
    deks = [secrets.token_bytes(32) for _ in range(1000)]
    sealed = [(await sealer.seal(dek))[0] for dek in deks]
    assert kek.stats.calls == {("wrap", "ok"): 1}
    audit = [r for r in caplog.records if r.name == "kmsplug.audit"]
    assert [getattr(r, "operation", "") for r in audit] == ["wrap"]
    assert getattr(audit[0], "key_version", "") == kek.key_id.rsplit(":", 1)[1]
    reader = make(label)
    cold = Sealer(reader)
    assert isinstance(reader, Resilient)
    opened = [await cold.open(ciphertext) for ciphertext in sealed]
    assert opened == deks and reader.stats.calls == {("unwrap", "ok"): 1}
    assert PIN not in caplog.text


async def test_concurrent_calls_share_a_bounded_session_pool(hsm: SoftHsm, make: Make) -> None:
    label = new_label()
    hsm.keygen(TOKEN, PIN, label, "01")
    kek = make(label, max_sessions=3)
    await kek.preflight()
    secrets_ = [secrets.token_bytes(32) for _ in range(200)]
    wrapped: list[bytes] = [b""] * len(secrets_)

    async def one(index: int) -> None:
        wrapped[index] = await kek.wrap(secrets_[index])
        assert await kek.unwrap(wrapped[index]) == secrets_[index]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for index in range(len(secrets_)):
                tasks.start_soon(one, index)
    pool = inner(kek)._pool
    assert len(pool._idle) <= 3
    pool.reset()  # every session and the login dropped (as after an HSM restart)
    assert await kek.unwrap(wrapped[0]) == secrets_[0]  # logs in again on its own


async def test_a_hung_token_costs_the_deadline_not_a_pile_up(hsm: SoftHsm, make: Make) -> None:
    label = new_label()
    hsm.keygen(TOKEN, PIN, label, "01")
    kek = make(label, policy=ResiliencePolicy(deadline=0.5))
    await kek.preflight()
    wrapped = await kek.wrap(b"d" * 32)
    started = anyio.current_time()
    with pkcs11_session.pkcs11_lock:  # as if a call into the module never returned
        with pytest.raises(ProviderUnavailable):
            await kek.unwrap(wrapped)
        assert anyio.current_time() - started < 1.5
    assert await kek.unwrap(wrapped) == b"d" * 32


def test_settings_from_env() -> None:
    env = {
        "KMSPLUG_PKCS11_TOKEN": "tok",
        "KMSPLUG_PKCS11_KEY_LABEL": "kek",
        "KMSPLUG_PKCS11_PIN": "1234",
        "KMSPLUG_PKCS11_MECHANISM": "aes-key-wrap",
        "KMSPLUG_PKCS11_KEY_ID": "0a0b",
    }
    settings = settings_from_env(env)
    assert settings == Pkcs11Settings(
        token_label="tok",  # noqa: S106 - a label
        key_label="kek",
        library=LIBRARY,
        pin_env="KMSPLUG_PKCS11_PIN",
        key_id_hex="0a0b",
        mechanism="aes-key-wrap",
    )
    assert "1234" not in repr(settings)
    with_file = settings_from_env({**env, "KMSPLUG_PKCS11_PIN_FILE": "/run/pin"})
    assert with_file.pin_file == "/run/pin" and not with_file.pin_env
    for name, value in [
        ("KMSPLUG_PKCS11_TOKEN", ""),
        ("KMSPLUG_PKCS11_KEY_LABEL", ""),
        ("KMSPLUG_PKCS11_MECHANISM", "aes-cbc"),
        ("KMSPLUG_PKCS11_KEY_ID", "zz"),
    ]:
        with pytest.raises(ConfigError):
            settings_from_env({**env, name: value})
    with pytest.raises(ConfigError, match="PIN"):
        settings_from_env({k: v for k, v in env.items() if k != "KMSPLUG_PKCS11_PIN"})
