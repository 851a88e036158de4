"""The AWS KMS provider against local-kms (tests/aws/emulator.py), a real KMS wire protocol.

local-kms cannot throttle, answer 5xx, deny by policy or check credentials: those
mappings are tested with errors as botocore raises them (botocore Stubber).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber

from kmsplug.core import MODE_DIRECT, frame_direct, peek
from kmsplug.errors import (
    ConfigError,
    InvalidCiphertext,
    ProviderRefused,
    ProviderThrottled,
    ProviderTransient,
    ProviderUnavailable,
    UnknownKeyId,
)
from kmsplug.providers.aws.kek import BOUND_KEY_ID, AwsKek, build, classify_error, make_client
from kmsplug.providers.aws.settings import AwsSettings, settings_from_env
from kmsplug.providers.resilient import ResiliencePolicy, Resilient
from kmsplug.sealer import Sealer

from aws.emulator import CREDENTIALS, REGION, LocalKms

pytestmark = pytest.mark.anyio

Make = Callable[..., Resilient]
FAST = ResiliencePolicy(deadline=1.0, max_attempts=2, backoff_base=0.01)


@pytest.fixture
async def make(kms: LocalKms) -> AsyncIterator[Make]:
    made: list[Resilient] = []

    def factory(key: str, **fields: Any) -> Resilient:
        settings = AwsSettings(key=key, region=REGION, endpoint_url=kms.endpoint, **fields)
        kek = Resilient(build(settings, CREDENTIALS), FAST)
        made.append(kek)
        return kek

    yield factory
    for kek in made:
        await kek.aclose()


async def test_preflight_and_round_trip(kms: LocalKms, make: Make) -> None:
    arn = kms.create_key()
    kek = make(arn.rsplit("/", 1)[1])  # the bare key id
    lines = await kek.preflight()
    assert kek.key_id == f"aws:{arn}" and arn in lines[0]
    dek = secrets.token_bytes(32)
    assert await kek.unwrap(await kek.wrap(dek)) == dek
    await kek.health()


async def test_alias_resolves_to_the_key_arn(kms: LocalKms, make: Make) -> None:
    arn = kms.create_key(alias="alias/kmsplug-test")
    kek = make("alias/kmsplug-test", encryption_context={"cluster": "a"})
    await kek.preflight()
    assert kek.key_id == f"aws:{arn}"
    assert kek.owns("alias/kmsplug-test") and kek.owns(f"aws:{arn}") and not kek.owns("aws:x")


async def test_disabled_key_is_refused(kms: LocalKms, make: Make) -> None:
    arn = kms.create_key()
    kek = make(arn)
    await kek.preflight()
    wrapped = await kek.wrap(b"k" * 32)
    kms.client().disable_key(KeyId=arn)
    with pytest.raises(ProviderRefused, match="Enabled"):
        await make(arn).preflight()
    with pytest.raises(ProviderRefused, match="disabled"):
        await kek.wrap(b"k" * 32)
    with pytest.raises(ProviderRefused, match="disabled"):
        await kek.unwrap(wrapped)


async def test_missing_key_is_refused(kms: LocalKms, make: Make) -> None:
    with pytest.raises(ProviderRefused, match="not found: check the key and the region"):
        await make("alias/no-such-key").preflight()
    with pytest.raises(ProviderRefused, match="not found"):
        await make("0e4b2d8a-0000-4000-8000-000000000000").wrap(b"x")


async def test_tampered_blob_is_invalid(kms: LocalKms, make: Make) -> None:
    kek = make(kms.create_key())
    await kek.preflight()
    wrapped = bytearray(await kek.wrap(b"k" * 32))
    wrapped[-1] ^= 1
    with pytest.raises(InvalidCiphertext):
        await kek.unwrap(bytes(wrapped))
    with pytest.raises(InvalidCiphertext):
        await kek.unwrap(b"")
    with pytest.raises(InvalidCiphertext):  # another key's blob, decrypted with KeyId pinned
        await kek.unwrap(await make(kms.create_key()).wrap(b"k" * 32))


async def test_wrong_encryption_context_fails(kms: LocalKms, make: Make) -> None:
    arn = kms.create_key()
    wrapped = await make(arn, encryption_context={"cluster": "a"}).wrap(b"k" * 32)
    with pytest.raises((InvalidCiphertext, ProviderRefused)):
        await make(arn, encryption_context={"cluster": "b"}).unwrap(wrapped)
    with pytest.raises((InvalidCiphertext, ProviderRefused)):
        await make(arn).unwrap(wrapped)


async def test_aws_encryption_provider_ciphertext_opens(kms: LocalKms, make: Make) -> None:
    arn = kms.create_key(alias="alias/legacy")
    context = {"purpose": "k8s"}
    dek = secrets.token_bytes(32)
    blob = kms.client().encrypt(KeyId="alias/legacy", Plaintext=dek, EncryptionContext=context)
    legacy = b"1" + blob["CiphertextBlob"]
    kek = make("alias/legacy", encryption_context=context)
    await kek.preflight()
    sealer = Sealer(kek)
    await sealer.start()
    assert kek.claims_legacy(legacy) and not kek.claims_legacy(b"\xc9" + legacy[1:])
    assert await sealer.open(legacy) == dek  # v1: no key_id
    assert await sealer.open(legacy, "alias/legacy") == dek  # v2: its --key verbatim
    assert await sealer.open(legacy, f"aws:{arn}") == dek
    with pytest.raises(InvalidCiphertext):
        await sealer.open(legacy[:-1] + bytes([legacy[-1] ^ 1]))


async def test_direct_mode_frames_the_blob_and_binds_its_key_id(kms: LocalKms, make: Make) -> None:
    """kmsplug's own direct mode: the provider's b'1' + CiphertextBlob in a mode-2 frame,
    the frame's key_id in the encryption context (main wrote the bare blob, which opens
    under any key_id: conformance's v2.decrypt.unknown_key_id)."""
    arn = kms.create_key(alias="alias/framed")
    kek = make(arn, encryption_context={"c": "1"}, legacy_key_ids=("alias/framed",))
    await kek.preflight()
    sealer = Sealer(kek, hierarchy=False)
    dek = secrets.token_bytes(32)
    ciphertext, key_id = await sealer.seal(dek)
    mode, embedded, wrapped = peek(ciphertext)
    assert (mode, embedded, key_id) == (MODE_DIRECT, f"aws:{arn}", f"aws:{arn}")
    assert wrapped[:1] == b"1"
    assert await sealer.open(ciphertext, key_id) == dek
    assert await sealer.open(ciphertext) == dek  # v1: no key_id
    for other in ("alias/framed", "aws:arn:aws:kms:elsewhere"):
        with pytest.raises((InvalidCiphertext, UnknownKeyId)):
            await sealer.open(ciphertext, other)  # not the key_id it was sealed under
    # The key_id is bound at KMS: the context with it decrypts, the plain one does not.
    bound = {"c": "1", BOUND_KEY_ID: key_id}
    assert (
        kms.client().decrypt(CiphertextBlob=wrapped[1:], EncryptionContext=bound)["Plaintext"]
        == dek
    )
    with pytest.raises(ClientError):
        kms.client().decrypt(CiphertextBlob=wrapped[1:], EncryptionContext={"c": "1"})
    # A header whose key_id was changed to another this provider owns fails at KMS.
    relabelled = frame_direct("alias/framed", wrapped)
    with pytest.raises(InvalidCiphertext):
        await sealer.open(relabelled, "alias/framed")


async def test_compat_aws_writes_aws_encryption_provider_format(kms: LocalKms, make: Make) -> None:
    arn = kms.create_key()
    kek = make(arn, encryption_context={"c": "1"}, compat_aws=True)
    await kek.preflight()
    sealer = Sealer(kek, hierarchy=False)
    dek = secrets.token_bytes(32)
    ciphertext, key_id = await sealer.seal(dek)
    assert ciphertext[:1] == b"1" and key_id == arn  # its --key verbatim, as it reports
    assert await sealer.open(ciphertext, key_id) == dek
    # what aws-encryption-provider would do with it: strip the '1', Decrypt
    blob = kms.client().decrypt(CiphertextBlob=ciphertext[1:], EncryptionContext={"c": "1"})
    assert blob["Plaintext"] == dek


async def test_bare_blob_of_an_older_kmsplug_direct_mode_still_opens(
    kms: LocalKms, make: Make
) -> None:
    """What kmsplug's direct mode wrote before the frame: b'1' + CiphertextBlob under our
    context, stored under key_id aws:<arn>. It keeps opening (legacy path, any key_id)."""
    arn = kms.create_key()
    dek = secrets.token_bytes(32)
    blob = kms.client().encrypt(KeyId=arn, Plaintext=dek, EncryptionContext={"c": "1"})
    older = b"1" + blob["CiphertextBlob"]
    sealer = Sealer(make(arn, encryption_context={"c": "1"}), hierarchy=False)
    assert await sealer.open(older, f"aws:{arn}") == dek
    assert await sealer.open(older) == dek
    assert await sealer.open(older, "a --key of long ago") == dek  # as aws-encryption-provider


async def test_hierarchy_costs_one_encrypt(kms: LocalKms, make: Make) -> None:
    kek = make(kms.create_key())
    await kek.preflight()
    before = kek.stats.calls.get(("wrap", "ok"), 0)
    sealer = Sealer(kek)
    await sealer.start()
    sealed = [await sealer.seal(secrets.token_bytes(32)) for _ in range(1000)]
    assert kek.stats.calls.get(("wrap", "ok"), 0) - before == 1
    ciphertext, key_id = sealed[-1]
    fresh = Sealer(kek)  # a restarted plugin: one Decrypt for the local KEK
    assert len(await fresh.open(ciphertext, key_id)) == 32


def _stubbed(code: str, status: int, method: str = "encrypt") -> AwsKek:
    settings = AwsSettings(key="alias/k", region=REGION, endpoint_url="http://127.0.0.1:9")
    client = make_client(settings, CREDENTIALS)
    stubber = Stubber(client)
    stubber.add_client_error(method, service_error_code=code, http_status_code=status)
    stubber.activate()
    return AwsKek(settings, client)


@pytest.mark.parametrize(
    ("code", "status", "error", "text"),
    [
        ("ThrottlingException", 400, ProviderThrottled, "quota"),
        ("LimitExceededException", 400, ProviderThrottled, "quota"),
        ("AccessDeniedException", 400, ProviderRefused, "kms:Encrypt, kms:Decrypt"),
        ("KMSInvalidStateException", 400, ProviderRefused, "disabled"),
        ("KMSInternalException", 500, ProviderTransient, "KMSInternalException"),
        ("InternalFailure", 503, ProviderTransient, "503|InternalFailure"),
        ("UnrecognizedClientException", 400, ProviderRefused, "credentials"),
    ],
)
async def test_error_mapping(code: str, status: int, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        await _stubbed(code, status).wrap(b"k")


async def test_incorrect_key_is_invalid_ciphertext() -> None:
    with pytest.raises(InvalidCiphertext):
        await _stubbed("IncorrectKeyException", 400, "decrypt").unwrap(b"1" + b"b" * 32)


async def test_throttling_is_retried_then_unavailable() -> None:
    kek = Resilient(_stubbed("ThrottlingException", 400), ResiliencePolicy(max_attempts=1))
    with pytest.raises(ProviderUnavailable):
        await kek.wrap(b"k")
    assert kek.stats.throttled == 1


async def test_unreachable_endpoint_is_transient() -> None:
    settings = AwsSettings(key="alias/k", region=REGION, endpoint_url="http://127.0.0.1:9")
    error = classify_error(EndpointConnectionError(endpoint_url="x"), settings, "Encrypt")
    assert isinstance(error, ProviderTransient)
    kek = AwsKek(settings, make_client(settings, CREDENTIALS))
    with pytest.raises(ProviderTransient):
        await kek.wrap(b"k")


def test_settings_from_env() -> None:
    settings = settings_from_env(
        {
            "KMSPLUG_AWS_KEY": "alias/k",
            "AWS_DEFAULT_REGION": "us-east-1",
            "KMSPLUG_AWS_ENDPOINT": "https://kms.example",
            "KMSPLUG_AWS_ENCRYPTION_CONTEXT": "a=b, c=d",
            "KMSPLUG_AWS_LEGACY_KEY_IDS": "x,y",
        }
    )
    assert settings.region == "us-east-1" and settings.endpoint_url == "https://kms.example"
    assert settings.encryption_context == {"a": "b", "c": "d"}
    assert settings.legacy_key_ids == ("x", "y")
    env = {"KMSPLUG_AWS_KEY": "k", "KMSPLUG_AWS_ENCRYPTION_CONTEXT": '{"a": "b"}'}
    assert settings_from_env(env).encryption_context == {"a": "b"}
    for bad in ({}, {"KMSPLUG_AWS_KEY": "k", "KMSPLUG_AWS_ENCRYPTION_CONTEXT": "{x"}):
        with pytest.raises(ConfigError):
            settings_from_env(bad)


def test_owns_legacy_key_ids(tmp_path: Path) -> None:
    settings = AwsSettings(key="alias/k", region=REGION, legacy_key_ids=("old",))
    kek = AwsKek(settings, client=None)
    assert kek.owns("old") and kek.owns("alias/k") and not kek.owns("other")
