"""Issue 12, point 1: no key byte reaches a log, at the most verbose level kmsplug accepts.

Every provider runs as a real `kmsplug serve` process against its real (or strict fake)
KMS: the local key file; Alibaba on tests/fakes (with the Tea SDK's own request debug
switched on, DEBUG=sdk); Vault on a real OpenBao; AWS on local-kms; PKCS#11 on SoftHSM.
Each in hierarchy and in direct mode, Alibaba also as the ack-kms-plugin drop-in
(`--compat ack --gloglevel 5`, its manifest's verbosity). The log is then searched for
every DEK and every key kmsplug holds that the test can see (the local key file; the
local KEK that Alibaba wraps) in raw, hex, base64 and URL-encoded form.

A second test sends client strings built to forge log lines and to bloat the log.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import anyio
import grpc
import pytest

from kmsplug._kmsplug import peek
from kmsplug._proto.v2 import api_pb2 as v2
from kmsplug.client import CHANNEL_OPTIONS, KmsClient

from plugin_process import PluginFactory, PluginProcess

pytestmark = pytest.mark.anyio

ROUND_TRIPS = 40  # per API version


def encodings(secret: bytes) -> dict[str, bytes]:
    """The forms a library could print a secret in."""
    b64 = base64.b64encode(secret)
    return {
        "raw": secret,
        "repr": repr(secret)[2:-1].encode(),
        "hex": secret.hex().encode(),
        "HEX": secret.hex().upper().encode(),
        "base64": b64,
        "base64-unpadded": b64.rstrip(b"="),
        "base64-prefix": b64[:24],
        "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
        "url-encoded": urllib.parse.quote(b64.decode(), safe="").encode(),
        "url-encoded-lower": urllib.parse.quote(b64.decode(), safe="").lower().encode(),
        "form-encoded": urllib.parse.quote_plus(b64.decode()).encode(),
    }


def leaks(log: bytes, secrets_by_name: dict[str, bytes]) -> list[str]:
    lowered = log.lower()
    found = []
    for name, secret in secrets_by_name.items():
        for form, encoded in encodings(secret).items():
            haystack = lowered if form == "url-encoded-lower" else log
            if encoded in haystack:
                found.append(f"{name} as {form}")
    return found


@contextlib.contextmanager
def provider_flags(
    provider: str, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[list[str], object]]:
    """Start the provider's KMS; yield the serve flags and a handle on the KMS."""
    if provider == "local":
        yield [], None
    elif provider == "alibaba":
        from fakes.alibaba_kms import FakeAlibabaKms
        from fakes.alibaba_provider import env_for

        with FakeAlibabaKms() as fake:
            key = fake.create_key()
            for name, value in env_for(fake).items():
                monkeypatch.setenv(name, value)
            monkeypatch.setenv("DEBUG", "sdk")  # the Tea SDK's own request/response debug
            yield (
                [
                    *("--provider", "alibaba", "--key-id", key, "--region", fake.region),
                    *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
                ],
                (fake, key),
            )
    elif provider == "vault":
        from vault.devserver import transit_server

        with transit_server(tmp / "bao") as bao:
            monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
            yield (
                [
                    *("--provider", "vault", "--vault-address", bao.address),
                    *("--vault-transit-key", "k8s"),
                ],
                bao,
            )
    elif provider == "aws":
        from aws.emulator import CREDENTIALS, REGION, LocalKms

        (tmp / "aws").mkdir()
        kms = LocalKms(tmp / "aws").start()
        try:
            for name, value in CREDENTIALS.items():
                monkeypatch.setenv(name, value)
            yield (
                [
                    *("--provider", "aws", "--aws-key", kms.create_key()),
                    *("--aws-endpoint", kms.endpoint, "--aws-region", REGION),
                ],
                kms,
            )
        finally:
            kms.stop()
    elif provider == "pkcs11":
        from hsm.softhsm import LIBRARY, SoftHsm, ensure_installed

        reason = ensure_installed()
        if reason:
            pytest.skip(reason)
        hsm = SoftHsm(tmp / "hsm").create()
        monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
        hsm.init_token("k8s", "1234")
        hsm.keygen("k8s", "1234", "kek", "01")
        monkeypatch.setenv("KMSPLUG_PKCS11_PIN", "1234")
        yield (
            [
                *("--provider", "pkcs11", "--pkcs11-library", LIBRARY),
                *("--pkcs11-token", "k8s", "--pkcs11-key-label", "kek"),
            ],
            hsm,
        )
    else:
        raise ValueError(provider)


CASES = [
    ("local", "hierarchy"),
    ("local", "direct"),
    ("alibaba", "hierarchy"),
    ("alibaba", "ack"),  # its direct mode; plain --mode direct cannot open its own ciphertexts yet
    ("vault", "hierarchy"),
    ("vault", "direct"),
    ("aws", "hierarchy"),
    ("aws", "direct"),
    ("pkcs11", "hierarchy"),
    ("pkcs11", "direct"),
]


async def round_trips(plugin: PluginProcess) -> tuple[list[bytes], list[bytes]]:
    """v1 and v2 round trips with fresh DEKs; returns the DEKs and the v2 ciphertexts."""
    deks = [secrets.token_bytes(32) for _ in range(2 * ROUND_TRIPS)]
    sealed_v2: list[bytes] = []
    async with KmsClient(plugin.endpoint, timeout=30) as client:
        for dek in deks[:ROUND_TRIPS]:
            assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek
        for dek in deks[ROUND_TRIPS:]:
            sealed = await client.v2_encrypt(dek)
            assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
            sealed_v2.append(sealed.ciphertext)
        with pytest.raises(grpc.aio.AioRpcError):  # a refusal is logged at debug
            await client.v2_decrypt(sealed_v2[0][:-1], sealed.key_id)
    return deks, sealed_v2


async def alibaba_local_kek(handle: object, ciphertext: bytes) -> bytes:
    """The local KEK inside a hierarchy ciphertext, unwrapped through the fake KMS."""
    from fakes.alibaba_provider import provider

    fake, key = handle  # type: ignore[misc]
    _, _, wrapped = peek(ciphertext)
    kek = provider(fake, key)
    try:
        return bytes(await kek.unwrap(wrapped))
    finally:
        await kek.aclose()


@pytest.mark.parametrize(("provider", "mode"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
async def test_no_key_byte_in_the_log_at_the_most_verbose_level(
    provider: str,
    mode: str,
    plugin_factory: PluginFactory,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with provider_flags(provider, short_tmp, monkeypatch) as (flags, handle):
        verbosity = ["--gloglevel", "5"] if mode == "ack" else ["--log-level", "debug"]
        modes = {"hierarchy": [], "direct": ["--mode", "direct"], "ack": ["--compat", "ack"]}
        log_format = ["--log-format", "json"] if mode == "direct" else []
        plugin = plugin_factory(
            *flags,
            *modes[mode],
            *verbosity,
            *log_format,
            *("--health-probe-interval", "0.5"),  # probes run during the calls too
        )
        deks, sealed_v2 = await round_trips(plugin)
        await anyio.sleep(1.2)  # two more probes
        watched = {f"dek{i}": dek for i, dek in enumerate(deks)}
        if plugin.key_file.exists():  # the local provider's root key
            watched["local key file"] = plugin.key_file.read_bytes()
        if provider == "alibaba" and mode == "hierarchy":
            watched["local KEK"] = await alibaba_local_kek(handle, sealed_v2[0])
        assert plugin.terminate() == 0
    log = plugin.log_path.read_bytes() if plugin.log_path else b""
    assert b"stopped" in log
    assert b" DEBUG " in log or b'"level": "debug"' in log  # the level really was debug
    assert leaks(log, watched) == []


async def test_client_strings_cannot_forge_or_bloat_log_lines(
    plugin_factory: PluginFactory,
) -> None:
    plugin = plugin_factory("--log-level", "debug")
    forged = "x\n2026-01-01 00:00:00,000 INFO    kmsplug.server: forged line"
    huge = "u" * (3 << 20)  # a 3 MiB uid
    before = len(plugin.log())
    async with KmsClient(plugin.endpoint) as client:
        sealed = await client.v2_encrypt(secrets.token_bytes(32))
    async with grpc.aio.insecure_channel(
        plugin.endpoint.grpc_target,
        options=[*CHANNEL_OPTIONS, ("grpc.max_send_message_length", 8 << 20)],
    ) as channel:
        decrypt = channel.unary_unary(
            "/v2.KeyManagementService/Decrypt",
            request_serializer=v2.DecryptRequest.SerializeToString,
            response_deserializer=v2.DecryptResponse.FromString,
        )
        for uid, key_id, annotations in (
            (forged, sealed.key_id, {}),
            ("u", forged, {}),
            ("u", sealed.key_id + "\r\nforged", {forged.replace("\n", "."): b"v"}),
            (huge, sealed.key_id, {}),
        ):
            request = v2.DecryptRequest(
                ciphertext=sealed.ciphertext[:-1],  # refused: the refusal is logged
                uid=uid,
                key_id=key_id,
                annotations=annotations,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await decrypt(request, timeout=30)
            assert refused.value.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
            )
    assert plugin.terminate() == 0
    added = plugin.log()[before:]
    assert "forged line" in added  # it was logged, escaped, on the refusal's own line
    assert not any(line.startswith("2026-01-01") for line in added.splitlines())
    assert len(added) < 64 * 1024  # not 3 MiB
