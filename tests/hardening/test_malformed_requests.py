"""Issue 12, point 2: every malformed request is INVALID_ARGUMENT, never INTERNAL or UNKNOWN.

Requests go over the real socket to a real `kmsplug serve`, as raw bytes where the point
is bytes no protobuf library would produce (invalid UTF-8 in a string field, a truncated
length, garbage). Each refusal is counted in kmsplug_requests_total and logs no ERROR.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kmsplug import errors
from kmsplug._proto.v1beta1 import api_pb2 as v1
from kmsplug._proto.v2 import api_pb2 as v2
from kmsplug.client import CHANNEL_OPTIONS, KmsClient
from kmsplug.servicers import status_for

from plugin_process import PluginFactory, PluginProcess

pytestmark = pytest.mark.anyio

# Bytes that are not a valid message of any KMS request type.
TRUNCATED = b"\x0a\x64abc"  # field 1, length 100, 3 bytes follow
GARBAGE = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # a varint tag too long, wire type 7
BAD_UTF8_FIELD_1 = b"\x0a\x02\xff\xfe"  # string field 1 (v1 `version`) not UTF-8
BAD_UTF8_UID = b"\x0a\x01x\x12\x02\xc3\x28"  # v2 Encrypt/Decrypt `uid` not UTF-8
BAD_UTF8_KEY_ID = b"\x1a\x02\xed\xa0"  # v2 Decrypt `key_id`: a lone surrogate
BAD_UTF8_ANNOTATION_KEY = b"\x22\x06\x0a\x02\xff\xfe\x12\x00"  # v2 annotations map key

MALFORMED: list[tuple[str, bytes]] = [
    ("/v1beta1.KeyManagementService/Version", BAD_UTF8_FIELD_1),
    ("/v1beta1.KeyManagementService/Encrypt", BAD_UTF8_FIELD_1),
    ("/v1beta1.KeyManagementService/Encrypt", TRUNCATED),
    ("/v1beta1.KeyManagementService/Decrypt", GARBAGE),
    ("/v2.KeyManagementService/Status", GARBAGE),
    ("/v2.KeyManagementService/Encrypt", BAD_UTF8_UID),
    ("/v2.KeyManagementService/Encrypt", TRUNCATED),
    ("/v2.KeyManagementService/Decrypt", BAD_UTF8_KEY_ID),
    ("/v2.KeyManagementService/Decrypt", BAD_UTF8_ANNOTATION_KEY),
    ("/v2.KeyManagementService/Decrypt", GARBAGE),
]


def requests_total(plugin: PluginProcess, **labels: str) -> float:
    with urllib.request.urlopen(plugin.http_url + "/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kmsplug_requests_total"
        and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def settled_requests_total(plugin: PluginProcess, expected: float, **labels: str) -> float:
    """requests_total once it reaches `expected`, or its value after 5 s."""
    for _ in range(50):
        value = requests_total(plugin, **labels)
        if value >= expected:
            return value
        await asyncio.sleep(0.1)
    return requests_total(plugin, **labels)


async def call_raw(plugin: PluginProcess, method: str, body: bytes) -> grpc.aio.AioRpcError:
    """Send `body` as the request of `method`; return the error it must end in."""
    async with grpc.aio.insecure_channel(
        plugin.endpoint.grpc_target, options=CHANNEL_OPTIONS
    ) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(body, timeout=10)
    return refused.value


async def test_undecodable_requests_are_invalid_argument_counted_and_not_errors(
    plugin_factory: PluginFactory,
) -> None:
    plugin = plugin_factory("--log-level", "debug")
    for method, body in MALFORMED:
        error = await call_raw(plugin, method, body)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed request",
        ), method
    # The count moves just after the caller sees its status: wait for it, briefly.
    assert await settled_requests_total(plugin, len(MALFORMED), code="INVALID_ARGUMENT") == len(
        MALFORMED
    )
    async with KmsClient(plugin.endpoint) as client:  # still serving
        dek = secrets.token_bytes(32)
        sealed = await client.v2_encrypt(dek)
        assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
    log = plugin.log()
    assert " ERROR " not in log and "Traceback" not in log
    assert "DecodeError" not in log and "Exception" not in log


@pytest.mark.parametrize("mode", ["hierarchy", "direct"])
async def test_empty_plaintext_is_invalid_argument_in_both_apis(
    plugin_factory: PluginFactory, mode: str
) -> None:
    plugin = plugin_factory("--mode", mode)
    async with KmsClient(plugin.endpoint) as client:
        for call in (client.v1_encrypt, client.v2_encrypt):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"")
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == "empty plaintext"
    assert requests_total(plugin, code="INTERNAL") == 0
    assert " ERROR " not in plugin.log()


async def test_v1_version_field_and_v2_key_id_are_checked(plugin: PluginProcess) -> None:
    """v1: "v1beta1" (kube-apiserver) or "" (other clients' health checks) only.
    v2 Decrypt: key_id is required (kube-apiserver always sends the one Encrypt returned)."""
    async with KmsClient(plugin.endpoint) as client:
        dek = secrets.token_bytes(32)
        sealed = await client.v2_encrypt(dek)
        v1_cipher = await client.v1_encrypt(dek)
    async with grpc.aio.insecure_channel(
        plugin.endpoint.grpc_target, options=CHANNEL_OPTIONS
    ) as channel:

        def method(path: str, response: type) -> grpc.aio.UnaryUnaryMultiCallable:
            return channel.unary_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response.FromString,
            )

        version = method("/v1beta1.KeyManagementService/Version", v1.VersionResponse)
        encrypt = method("/v1beta1.KeyManagementService/Encrypt", v1.EncryptResponse)
        decrypt = method("/v1beta1.KeyManagementService/Decrypt", v1.DecryptResponse)
        assert (await version(v1.VersionRequest(version=""), timeout=10)).version == "v1beta1"
        plain = await decrypt(v1.DecryptRequest(version="", cipher=v1_cipher), timeout=10)
        assert plain.plain == dek
        for call, request in (
            (version, v1.VersionRequest(version="v2")),
            (encrypt, v1.EncryptRequest(version="v1", plain=dek)),
            (decrypt, v1.DecryptRequest(version="v1beta2", cipher=v1_cipher)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == "unsupported version"

        v2_decrypt = method("/v2.KeyManagementService/Decrypt", v2.DecryptResponse)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await v2_decrypt(
                v2.DecryptRequest(ciphertext=sealed.ciphertext, uid="u", key_id=""), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "key_id required"


def test_every_kmsplug_error_has_a_deliberate_status() -> None:
    """One table maps each error class (the core's included) to a code: none falls through
    to the INTERNAL default by accident. InvalidInput is what the core raises for an
    argument out of range, an empty plaintext among them."""
    classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.KmsplugError)
    ]
    assert errors.InvalidInput in classes and errors.InvalidRequest in classes
    from kmsplug.servicers import _ERROR_STATUS

    mapped = {kind for kind, _, _ in _ERROR_STATUS}
    for cls in classes:
        if cls is errors.KmsplugError:
            continue
        assert any(issubclass(cls, kind) for kind in mapped), cls.__name__
    code, message = status_for(errors.InvalidInput("plaintext is empty"))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid argument")
    assert issubclass(errors.InvalidInput, ValueError)


def test_the_core_raises_invalid_input_for_an_empty_plaintext(tmp_path: Path) -> None:
    from kmsplug._kmsplug import RootKey

    root = RootKey.create_file(tmp_path / "root.key")
    with pytest.raises(errors.InvalidInput):
        root.seal_direct(b"")
