"""The fake Alibaba KMS, driven by the official SDK and, for signature cases, raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from alibabacloud_kms20160120 import models as kms_models
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException
from alibabacloud_tea_openapi.models import Config
from darabonba.exceptions import UnretryableException

from fakes.alibaba_kms import (
    MAX_PLAINTEXT_BYTES,
    AccessKeyCredential,
    FakeAlibabaKms,
    StsCredential,
    make_test_ca,
)

AK, SECRET = "LTAIfakeAccessKey01", "fake-secret-0001"


@pytest.fixture
def kms() -> Iterator[FakeAlibabaKms]:
    fake = FakeAlibabaKms().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def cred(kms: FakeAlibabaKms) -> AccessKeyCredential:
    return kms.add_access_key(AK, SECRET)


@pytest.fixture
def key_id(kms: FakeAlibabaKms) -> str:
    return kms.create_key(description="test key")


def sdk(
    kms: FakeAlibabaKms,
    cred: AccessKeyCredential | StsCredential | None = None,
    *,
    sk: str | None = None,
    access_key_id: str | None = None,
    stoken: str | None = None,
    read_timeout_ms: int = 3000,
    endpoint: str | None = None,
) -> Client:
    config = Config(
        access_key_id=access_key_id or (cred.access_key_id if cred else AK),
        access_key_secret=sk or (cred.access_key_secret if cred else SECRET),
        endpoint=endpoint or kms.host,
        protocol="http",
        read_timeout=read_timeout_ms,
        connect_timeout=1000,
    )
    sts_token = stoken or (cred.security_token if isinstance(cred, StsCredential) else None)
    if sts_token:
        config.security_token = sts_token
    return Client(config)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encrypt(client: Client, key: str, plaintext: bytes, context: dict[str, object] | None = None):
    request = kms_models.EncryptRequest(key_id=key, plaintext=b64(plaintext))
    if context is not None:
        request.encryption_context = context
    return client.encrypt(request).body


def decrypt(client: Client, blob: str, context: dict[str, object] | None = None):
    request = kms_models.DecryptRequest(ciphertext_blob=blob)
    if context is not None:
        request.encryption_context = context
    return client.decrypt(request).body


def describe(client: Client, key: str):
    return client.describe_key(kms_models.DescribeKeyRequest(key_id=key)).body


def client_error(call, *args, **kwargs) -> ClientException:
    with pytest.raises(ClientException) as raised:
        call(*args, **kwargs)
    return raised.value


# --------------------------------------------------------------------------- SDK: crypto


def test_round_trip_by_alias_with_encryption_context(kms, cred, key_id) -> None:
    kms.create_alias("alias/etcd", key_id)
    client = sdk(kms, cred)
    context = {"cluster": "prod", "purpose": "secrets"}
    out = encrypt(client, "alias/etcd", b"top secret \x00\xff", context)
    assert out.key_id == key_id
    assert out.key_version_id == kms.describe(key_id).primary_key_version
    assert base64.b64encode(base64.b64decode(out.ciphertext_blob)).decode() == out.ciphertext_blob
    assert out.request_id

    back = decrypt(client, out.ciphertext_blob, {"purpose": "secrets", "cluster": "prod"})
    assert base64.b64decode(back.plaintext) == b"top secret \x00\xff"
    assert (back.key_id, back.key_version_id) == (key_id, out.key_version_id)

    for wrong in ({"cluster": "dev", "purpose": "secrets"}, None, {}):
        error = client_error(decrypt, client, out.ciphertext_blob, wrong)
        assert (error.status_code, error.code) == (400, "InvalidParameter")
        assert "CiphertextBlob" in error.message


def test_sdk_endpoint_host_or_url(kms, cred, key_id) -> None:
    for endpoint in (kms.host, kms.endpoint):
        client = sdk(kms, cred, endpoint=endpoint)
        blob = encrypt(client, key_id, b"x").ciphertext_blob
        assert base64.b64decode(decrypt(client, blob).plaintext) == b"x"


def test_rotation_keeps_old_versions_decryptable(kms, cred, key_id) -> None:
    client = sdk(kms, cred)
    first = encrypt(client, key_id, b"before")
    new_version = kms.rotate_key(key_id)
    assert new_version != first.key_version_id
    second = encrypt(client, key_id, b"after")
    assert second.key_version_id == new_version
    assert describe(client, key_id).key_metadata.primary_key_version == new_version
    old = decrypt(client, first.ciphertext_blob)
    assert (base64.b64decode(old.plaintext), old.key_version_id) == (
        b"before",
        first.key_version_id,
    )
    assert decrypt(client, second.ciphertext_blob).key_version_id == new_version


def test_describe_key_metadata(kms, cred, key_id) -> None:
    kms.create_alias("alias/meta", key_id)
    metadata = describe(sdk(kms, cred), "alias/meta").key_metadata
    assert metadata.key_id == key_id
    assert (metadata.key_state, metadata.key_usage, metadata.key_spec) == (
        "Enabled",
        "ENCRYPT/DECRYPT",
        "Aliyun_AES_256",
    )
    assert metadata.arn == f"acs:kms:cn-hangzhou:{kms.account_id}:key/{key_id}"
    assert metadata.primary_key_version == kms.describe(key_id).primary_key_version
    assert datetime.strptime(metadata.creation_date, "%Y-%m-%dT%H:%M:%SZ")
    assert (metadata.origin, metadata.protection_level, metadata.description) == (
        "Aliyun_KMS",
        "SOFTWARE",
        "test key",
    )


def test_async_sdk_round_trip_with_awkward_characters(kms, cred, key_id) -> None:
    # The async path (aiohttp) encodes the query differently and adds an unsigned
    # Content-Type: application/octet-stream; the fake must accept both, like the real one.
    kms.create_alias("alias/a b+c", key_id)
    client = sdk(kms, cred)
    context = {"x y": "\u00fc/+&=:"}

    async def round_trip() -> bytes:
        request = kms_models.EncryptRequest(
            key_id="alias/a b+c", plaintext=b64(b"\xfb\xff?~"), encryption_context=context
        )
        blob = (await client.encrypt_async(request)).body.ciphertext_blob
        answer = await client.decrypt_async(
            kms_models.DecryptRequest(ciphertext_blob=blob, encryption_context=context)
        )
        return base64.b64decode(answer.body.plaintext)

    assert asyncio.run(round_trip()) == b"\xfb\xff?~"
    assert kms.count(outcome="Success") == 2


def test_concurrent_clients(kms, cred, key_id) -> None:
    def work(worker: int) -> int:
        client = sdk(kms, cred)
        for i in range(10):
            data = f"{worker}-{i}".encode()
            blob = encrypt(client, key_id, data, {"w": str(worker)}).ciphertext_blob
            assert base64.b64decode(decrypt(client, blob, {"w": str(worker)}).plaintext) == data
        return worker

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(pool.map(work, range(8))) == list(range(8))
    assert kms.call_counts == {("Encrypt", "Success"): 80, ("Decrypt", "Success"): 80}
    assert len(set(kms.request_ids)) == 160


def test_asymmetric_and_sm4_keys(kms, cred) -> None:
    client = sdk(kms, cred)
    rsa = kms.create_key(key_spec="RSA_2048", key_usage="SIGN/VERIFY")
    assert describe(client, rsa).key_metadata.key_usage == "SIGN/VERIFY"
    error = client_error(encrypt, client, rsa, b"x")
    assert (error.status_code, error.code) == (400, "Rejected.UnsupportedOperation")
    sm4 = kms.create_key(key_spec="Aliyun_SM4")
    blob = encrypt(client, sm4, b"sm4").ciphertext_blob
    assert base64.b64decode(decrypt(client, blob).plaintext) == b"sm4"
    with pytest.raises(ValueError, match="KeySpec"):
        kms.create_key(key_spec="Aliyun_RSA_2048")


def test_generate_data_key(kms, cred, key_id) -> None:
    client = sdk(kms, cred)
    body = client.generate_data_key(
        kms_models.GenerateDataKeyRequest(key_id=key_id, encryption_context={"k": "v"})
    ).body
    data_key = base64.b64decode(body.plaintext)
    assert len(data_key) == 32
    assert base64.b64decode(decrypt(client, body.ciphertext_blob, {"k": "v"}).plaintext) == data_key


def test_key_states_and_missing_keys(kms, cred, key_id) -> None:
    client = sdk(kms, cred)
    blob = encrypt(client, key_id, b"data").ciphertext_blob

    kms.set_key_state(key_id, "Disabled")
    for error in (client_error(encrypt, client, key_id, b"x"), client_error(decrypt, client, blob)):
        assert (error.status_code, error.code) == (409, "Rejected.Disabled")
    assert describe(client, key_id).key_metadata.key_state == "Disabled"

    kms.set_key_state(key_id, "PendingDeletion")
    error = client_error(decrypt, client, blob)
    assert (error.status_code, error.code) == (409, "Rejected.PendingDeletion")
    assert describe(client, key_id).key_metadata.delete_date

    kms.set_key_state(key_id, "Enabled")
    assert base64.b64decode(decrypt(client, blob).plaintext) == b"data"

    kms.create_alias("alias/gone", key_id)
    kms.delete_key(key_id)
    for call, arg in ((decrypt, blob), (describe, key_id)):
        error = client_error(call, client, arg)
        assert (error.status_code, error.code) == (404, "Forbidden.KeyNotFound")
    error = client_error(describe, client, "alias/gone")
    assert (error.status_code, error.code) == (404, "Forbidden.AliasNotFound")


def test_keys_of_another_account_are_invisible(kms, cred) -> None:
    other = kms.create_key(account_id="9999999999999999")
    error = client_error(describe, sdk(kms, cred), other)
    assert error.code == "Forbidden.KeyNotFound"


def test_parameter_validation(kms, cred, key_id) -> None:
    client = sdk(kms, cred)
    assert encrypt(client, key_id, b"a" * MAX_PLAINTEXT_BYTES).ciphertext_blob
    error = client_error(encrypt, client, key_id, b"a" * (MAX_PLAINTEXT_BYTES + 1))
    assert (error.code, error.message.split(",", 1)[1].strip()[:36]) == (
        "InvalidParameter",
        'The specified parameter "Plaintext" ',
    )
    error = client_error(encrypt, client, key_id, b"x", {"n": 1})
    assert error.code == "InvalidParameter" and "EncryptionContext" in error.message
    error = client_error(client.encrypt, kms_models.EncryptRequest(key_id=key_id))
    assert (error.status_code, error.code) == (400, "MissingParameter")
    error = client_error(decrypt, client, "not*base64")
    assert error.code == "InvalidParameter"
    error = client_error(decrypt, client, b64(b"\x01garbage"))
    assert error.code == "InvalidParameter"
    error = client_error(
        client.encrypt, kms_models.EncryptRequest(key_id=key_id, plaintext="eA==", dry_run="true")
    )
    assert error.code == "DryRunOperation"


# --------------------------------------------------------------------------- SDK: credentials


def test_wrong_secret_is_signature_mismatch(kms, cred, key_id) -> None:
    error = client_error(describe, sdk(kms, cred, sk="not-the-secret"), key_id)
    assert (error.status_code, error.code) == (400, "SignatureDoesNotMatch")
    assert "ACS3-HMAC-SHA256\n" in error.message


def test_unknown_and_disabled_access_key(kms, cred, key_id) -> None:
    error = client_error(describe, sdk(kms, access_key_id="LTAInobody", sk="x"), key_id)
    assert (error.status_code, error.code) == (404, "InvalidAccessKeyId.NotFound")
    kms.set_access_key_enabled(cred.access_key_id, False)
    error = client_error(describe, sdk(kms, cred), key_id)
    assert error.code == "InvalidAccessKeyId.Inactive"


def test_sts_token_ok_expired_mismatch(kms, key_id) -> None:
    sts = kms.issue_sts_token(ttl=600)
    assert sts.access_key_id.startswith("STS.")
    assert describe(sdk(kms, sts), key_id).key_metadata.key_id == key_id

    other = kms.issue_sts_token()
    error = client_error(describe, sdk(kms, sts, stoken=other.security_token), key_id)
    assert (error.status_code, error.code) == (400, "InvalidSecurityToken.MismatchWithAccessKey")

    error = client_error(describe, sdk(kms, sts, stoken="CAISforged"), key_id)
    assert error.code == "InvalidSecurityToken.Malformed"

    no_token = sdk(kms, access_key_id=sts.access_key_id, sk=sts.access_key_secret)
    assert client_error(describe, no_token, key_id).code == "InvalidAccessKeyId.NotFound"

    kms.expire_sts_token(sts.security_token)
    error = client_error(describe, sdk(kms, sts), key_id)
    assert (error.status_code, error.code) == (403, "InvalidSecurityToken.Expired")
    expired = kms.issue_sts_token(ttl=-1)
    assert client_error(describe, sdk(kms, expired), key_id).code == "InvalidSecurityToken.Expired"


def test_ram_permissions(kms, key_id) -> None:
    writer = kms.add_access_key(allowed_actions={"Encrypt"})
    client = sdk(kms, writer)
    blob = encrypt(client, key_id, b"p").ciphertext_blob
    error = client_error(decrypt, client, blob)
    assert (error.status_code, error.code) == (403, "Forbidden.RAM")
    assert "not authorized" in error.message
    kms.set_allowed_actions(writer.access_key_id, {"Encrypt", "Decrypt"})
    assert base64.b64decode(decrypt(client, blob).plaintext) == b"p"
    sts = kms.issue_sts_token(allowed_actions=["DescribeKey"])
    assert client_error(encrypt, sdk(kms, sts), key_id, b"x").code == "Forbidden.RAM"


# --------------------------------------------------------------------------- SDK: quota and faults


def test_throttling_per_account(kms, cred, key_id) -> None:
    kms.set_qps(0.001, burst=3)
    client = sdk(kms, cred)
    for _ in range(3):
        describe(client, key_id)
    error = client_error(describe, client, key_id)
    assert (error.status_code, error.code) == (429, "Rejected.Throttling")
    assert error.data["Message"] == "QPS Limit Exceeded"
    # another account has its own bucket
    other = kms.add_access_key(account_id="2222222222222222")
    other_key = kms.create_key(account_id="2222222222222222")
    assert describe(sdk(kms, other), other_key).key_metadata.key_id == other_key
    assert kms.count("DescribeKey", "Rejected.Throttling") == 1
    kms.set_qps(1000)
    assert describe(client, key_id).key_metadata.key_id == key_id


def test_latency_injection(kms, cred, key_id) -> None:
    client = sdk(kms, cred)
    describe(client, key_id)  # warm the connection
    kms.set_latency(0.5)
    started = time.monotonic()
    describe(client, key_id)
    assert 0.5 <= time.monotonic() - started < 2.5
    kms.set_latency(0.05, jitter=0.1)
    for _ in range(3):
        started = time.monotonic()
        describe(client, key_id)
        assert 0.05 <= time.monotonic() - started < 1.5
    kms.set_latency(0.0)
    started = time.monotonic()
    describe(client, key_id)
    assert time.monotonic() - started < 0.45


def test_error_injection(kms, cred, key_id) -> None:
    client = sdk(kms, cred)
    kms.inject_errors(2, status=503, code="ServiceUnavailableTemporary")
    for _ in range(2):
        with pytest.raises(ServerException) as raised:
            describe(client, key_id)
        assert (raised.value.status_code, raised.value.code) == (503, "ServiceUnavailableTemporary")
    describe(client, key_id)

    kms.inject_errors(1, status=500, code="InternalFailure", message="boom", actions={"Decrypt"})
    blob = encrypt(client, key_id, b"z").ciphertext_blob  # Encrypt is not targeted
    with pytest.raises(ServerException, match="boom"):
        decrypt(client, blob)

    kms.inject_errors(1, drop_connection=True)
    with pytest.raises(UnretryableException, match="without response"):
        describe(client, key_id)

    kms.set_fault_hook(
        lambda action: (429, "Rejected.Throttling", "hook") if action == "Encrypt" else None
    )
    assert client_error(encrypt, client, key_id, b"x").status_code == 429
    kms.set_fault_hook(None)
    assert kms.count(outcome="Dropped") == 1
    assert kms.count("Decrypt", "InternalFailure") == 1


def test_hang_mode_until_cleared(kms, cred, key_id) -> None:
    client = sdk(kms, cred, read_timeout_ms=300)
    kms.set_hang(True)
    with pytest.raises(UnretryableException, match="timed out"):
        describe(client, key_id)
    assert kms.hanging == 1
    assert kms.count("DescribeKey", "Hung") == 1
    kms.set_hang(False)
    assert describe(client, key_id).key_metadata.key_id == key_id


def test_stop_releases_hung_requests() -> None:
    fake = FakeAlibabaKms().start()
    fake.add_access_key(AK, SECRET)
    fake.set_hang(True)
    outcome: list[object] = []

    def call() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
        try:
            conn.request("POST", "/", headers={"x-acs-action": "DescribeKey"})
            outcome.append(conn.getresponse().status)
        except (OSError, http.client.HTTPException) as error:
            outcome.append(error)
        finally:
            conn.close()

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while fake.hanging == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.hanging == 1
    started = time.monotonic()
    fake.stop()
    thread.join(5)
    assert time.monotonic() - started < 3
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Exception)


def test_counters_and_request_ids(kms, cred, key_id) -> None:
    client = sdk(kms, cred)
    ids = [encrypt(client, key_id, b"1").request_id, describe(client, key_id).request_id]
    error = client_error(describe, client, "no-such-key")
    ids.append(error.data["RequestId"])
    assert kms.request_ids == ids
    assert len(set(ids)) == 3 and all(uuid.UUID(i) for i in ids)
    assert kms.call_counts == {
        ("Encrypt", "Success"): 1,
        ("DescribeKey", "Success"): 1,
        ("DescribeKey", "Forbidden.KeyNotFound"): 1,
    }
    assert kms.count("DescribeKey") == 2 and kms.count(outcome="Success") == 2
    assert [r.access_key_id for r in kms.requests] == [AK] * 3
    kms.reset_stats()
    assert kms.request_ids == [] and kms.count() == 0


# --------------------------------------------------------------------------- raw HTTP signatures


def sign(
    port: int,
    action: str,
    params: dict[str, str],
    *,
    ak: str = AK,
    sk: str = SECRET,
    when: datetime | None = None,
    nonce: str | None = None,
    extra_headers: dict[str, str] | None = None,
    version: str = "2016-01-20",
    body: bytes = b"",
    method: str = "POST",
) -> tuple[str, dict[str, str]]:
    """An independent ACS3-HMAC-SHA256 signer: (path with query, headers)."""
    headers = {
        "host": f"127.0.0.1:{port}",
        "x-acs-action": action,
        "x-acs-version": version,
        "x-acs-date": (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
        **(extra_headers or {}),
    }
    enc = lambda s: quote(s, safe="~")  # noqa: E731
    canonical_query = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(params.items()))
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    request = "\n".join(
        [
            method,
            "/",
            canonical_query,
            canonical_headers,
            ";".join(names),
            headers["x-acs-content-sha256"],
        ]
    )
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(request.encode()).hexdigest()
    signature = hmac.new(sk.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={ak},SignedHeaders={';'.join(names)},Signature={signature}"
    )
    return "/?" + urlencode(params), headers


def send(port: int, path: str, headers: dict[str, str], *, method: str = "POST", body: bytes = b""):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_raw_signed_request_accepted(kms, cred, key_id) -> None:
    path, headers = sign(kms.port, "Encrypt", {"KeyId": key_id, "Plaintext": b64(b"raw + / =")})
    status, body = send(kms.port, path, headers)
    assert status == 200 and body["KeyId"] == key_id
    path, headers = sign(kms.port, "Decrypt", {"CiphertextBlob": body["CiphertextBlob"]})
    status, body = send(kms.port, path, headers)
    assert (status, base64.b64decode(body["Plaintext"])) == (200, b"raw + / =")


def test_raw_tampered_query_rejected(kms, cred, key_id) -> None:
    other = kms.create_key()
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id})
    status, body = send(kms.port, path.replace(key_id, other), headers)
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    assert body["RequestId"] and body["Message"].startswith("Specified signature is not matched")


def test_raw_tampered_header_and_payload_rejected(kms, cred, key_id) -> None:
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id})
    headers["x-acs-action"] = "Encrypt"
    assert send(kms.port, path, headers)[1]["Code"] == "SignatureDoesNotMatch"
    # a body whose hash is not the signed x-acs-content-sha256
    path, headers = sign(
        kms.port,
        "DescribeKey",
        {},
        extra_headers={"content-type": "application/x-www-form-urlencoded"},
    )
    status, body = send(kms.port, path, headers, body=b"KeyId=" + key_id.encode())
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")


def test_raw_unknown_access_key(kms, cred, key_id) -> None:
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id}, ak="LTAIunknown")
    status, body = send(kms.port, path, headers)
    assert (status, body["Code"]) == (404, "InvalidAccessKeyId.NotFound")


def test_raw_stale_date_and_bad_format(kms, cred, key_id) -> None:
    old = datetime.now(UTC) - timedelta(minutes=16)
    status, body = send(kms.port, *sign(kms.port, "DescribeKey", {"KeyId": key_id}, when=old))
    assert (status, body["Code"]) == (400, "InvalidTimeStamp.Expired")
    future = datetime.now(UTC) + timedelta(minutes=16)
    status, body = send(kms.port, *sign(kms.port, "DescribeKey", {"KeyId": key_id}, when=future))
    assert body["Code"] == "InvalidTimeStamp.Expired"
    recent = datetime.now(UTC) - timedelta(minutes=14)
    assert send(kms.port, *sign(kms.port, "DescribeKey", {"KeyId": key_id}, when=recent))[0] == 200
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id})
    headers["x-acs-date"] = "yesterday"
    assert send(kms.port, path, headers)[1]["Code"] == "InvalidTimeStamp.Format"


def test_raw_replayed_nonce_rejected(kms, cred, key_id) -> None:
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id}, nonce="nonce-1")
    assert send(kms.port, path, headers)[0] == 200
    status, body = send(kms.port, path, headers)
    assert (status, body["Code"]) == (400, "SignatureNonceUsed")
    # a rejected signature does not burn the nonce
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id}, nonce="nonce-2", sk="bad")
    assert send(kms.port, path, headers)[1]["Code"] == "SignatureDoesNotMatch"
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id}, nonce="nonce-2")
    assert send(kms.port, path, headers)[0] == 200


def test_raw_incomplete_signatures(kms, cred, key_id) -> None:
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id})
    unsigned = dict(headers, **{"x-acs-extra": "1"})
    status, body = send(kms.port, path, unsigned)
    assert (status, body["Code"]) == (400, "IncompleteSignature")

    no_auth = {k: v for k, v in headers.items() if k != "Authorization"}
    assert send(kms.port, path, no_auth)[1]["Code"] == "IncompleteSignature"

    sm3 = dict(headers, Authorization=headers["Authorization"].replace("HMAC-SHA256", "HMAC-SM3"))
    assert send(kms.port, path, sm3)[1]["Code"] == "IncompleteSignature"

    without_nonce = {k: v for k, v in headers.items() if k != "x-acs-signature-nonce"}
    assert send(kms.port, path, without_nonce)[1]["Code"] == "IncompleteSignature"


def test_raw_protocol_errors(kms, cred, key_id) -> None:
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id}, version="2019-01-01")
    assert send(kms.port, path, headers)[1]["Code"] == "InvalidVersion"
    path, headers = sign(kms.port, "CreateKey", {})
    status, body = send(kms.port, path, headers)
    assert (status, body["Code"]) == (404, "InvalidAction.NotFound")
    path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id}, method="GET")
    status, body = send(kms.port, path, headers, method="GET")
    assert (status, body["Code"]) == (403, "UnsupportedHTTPMethod")


def test_raw_security_token_on_static_key(kms, cred, key_id) -> None:
    sts = kms.issue_sts_token()
    path, headers = sign(
        kms.port,
        "DescribeKey",
        {"KeyId": key_id},
        extra_headers={"x-acs-security-token": sts.security_token},
    )
    status, body = send(kms.port, path, headers)
    assert (status, body["Code"]) == (400, "InvalidSecurityToken.MismatchWithAccessKey")


# --------------------------------------------------------------------------- RPC-style signatures
# What ack-kms-plugin's Go SDK sends: SignatureVersion 1.0, HMAC-SHA1, every parameter in
# the query string. An independent signer below, written from the algorithm's description.


def rpc_sign(
    action: str,
    params: dict[str, str],
    *,
    ak: str = AK,
    sk: str = SECRET,
    when: datetime | None = None,
    nonce: str | None = None,
    method: str = "POST",
    **overrides: str,
) -> str:
    """The path with query of an RPC-style signed request."""
    query = {
        "Action": action,
        "Version": "2016-01-20",
        "Format": "JSON",
        "AccessKeyId": ak,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureType": "",
        "SignatureNonce": nonce or uuid.uuid4().hex,
        "Timestamp": (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "RegionId": "cn-hangzhou",
        **params,
        **overrides,
    }
    enc = lambda s: quote(s, safe="~")  # noqa: E731
    canonical = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(query.items()))
    to_sign = f"{method}&{enc('/')}&{enc(canonical)}"
    digest = hmac.new(f"{sk}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    query["Signature"] = base64.b64encode(digest).decode()
    return "/?" + urlencode(query)


FORM = {"content-type": "application/x-www-form-urlencoded", "host": "kms.example"}


def rpc_send(kms: FakeAlibabaKms, path: str, method: str = "POST") -> tuple[int, dict]:
    return send(kms.port, path, dict(FORM), method=method)


def test_rpc_signed_round_trip(kms, cred, key_id) -> None:
    kms.create_alias("alias/rpc", key_id)
    plaintext = b64(b"rpc ~*+ / = \x00")
    status, body = rpc_send(
        kms, rpc_sign("Encrypt", {"KeyId": "alias/rpc", "Plaintext": plaintext})
    )
    assert status == 200, body
    assert (body["KeyId"], body["KeyVersionId"]) == (
        key_id,
        kms.describe(key_id).primary_key_version,
    )
    status, back = rpc_send(kms, rpc_sign("Decrypt", {"CiphertextBlob": body["CiphertextBlob"]}))
    assert (status, back["Plaintext"]) == (200, plaintext)
    # GET is signed with its own method name and is accepted too
    assert rpc_send(kms, rpc_sign("DescribeKey", {"KeyId": key_id}, method="GET"), "GET")[0] == 200
    assert kms.count("Encrypt", "Success") == kms.count("Decrypt", "Success") == 1


def test_rpc_wrong_secret_and_tampering_refused(kms, cred, key_id) -> None:
    status, body = rpc_send(kms, rpc_sign("DescribeKey", {"KeyId": key_id}, sk="not-the-secret"))
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    other = kms.create_key()
    path = rpc_sign("DescribeKey", {"KeyId": key_id})
    assert rpc_send(kms, path.replace(key_id, other))[1]["Code"] == "SignatureDoesNotMatch"
    # signed as POST, sent as GET
    assert rpc_send(kms, path, "GET")[1]["Code"] == "SignatureDoesNotMatch"
    status, body = rpc_send(kms, rpc_sign("DescribeKey", {"KeyId": key_id}, ak="LTAIunknown"))
    assert (status, body["Code"]) == (404, "InvalidAccessKeyId.NotFound")
    assert kms.count(outcome="Success") == 0


def test_rpc_replayed_nonce_refused(kms, cred, key_id) -> None:
    path = rpc_sign("DescribeKey", {"KeyId": key_id}, nonce="rpc-nonce-1")
    assert rpc_send(kms, path)[0] == 200
    status, body = rpc_send(kms, path)
    assert (status, body["Code"]) == (400, "SignatureNonceUsed")
    # one nonce store for both signature styles
    acs3_path, headers = sign(kms.port, "DescribeKey", {"KeyId": key_id}, nonce="rpc-nonce-1")
    assert send(kms.port, acs3_path, headers)[1]["Code"] == "SignatureNonceUsed"
    # a refused signature does not burn its nonce
    bad = rpc_sign("DescribeKey", {"KeyId": key_id}, nonce="rpc-nonce-2", sk="bad")
    assert rpc_send(kms, bad)[1]["Code"] == "SignatureDoesNotMatch"
    assert rpc_send(kms, rpc_sign("DescribeKey", {"KeyId": key_id}, nonce="rpc-nonce-2"))[0] == 200


def test_rpc_stale_or_malformed_timestamp_refused(kms, cred, key_id) -> None:
    for skew in (timedelta(minutes=-16), timedelta(minutes=16)):
        when = datetime.now(UTC) + skew
        status, body = rpc_send(kms, rpc_sign("DescribeKey", {"KeyId": key_id}, when=when))
        assert (status, body["Code"]) == (400, "InvalidTimeStamp.Expired")
    recent = datetime.now(UTC) - timedelta(minutes=14)
    assert rpc_send(kms, rpc_sign("DescribeKey", {"KeyId": key_id}, when=recent))[0] == 200
    malformed = rpc_sign("DescribeKey", {"KeyId": key_id}, Timestamp="yesterday")
    assert rpc_send(kms, malformed)[1]["Code"] == "InvalidTimeStamp.Format"


def test_rpc_incomplete_or_unsupported_signatures_refused(kms, cred, key_id) -> None:
    for name in ("SignatureNonce", "Timestamp", "AccessKeyId", "SignatureVersion"):
        path = rpc_sign("DescribeKey", {"KeyId": key_id}, **{name: ""})
        status, body = rpc_send(kms, path)
        assert (status, body["Code"]) == (400, "MissingParameter"), name
    sha256 = rpc_sign("DescribeKey", {"KeyId": key_id}, SignatureMethod="HMAC-SHA256")
    assert rpc_send(kms, sha256)[1]["Code"] == "IncompleteSignature"
    v2 = rpc_sign("DescribeKey", {"KeyId": key_id}, SignatureVersion="2.0")
    assert rpc_send(kms, v2)[1]["Code"] == "IncompleteSignature"
    assert (
        rpc_send(kms, rpc_sign("DescribeKey", {"KeyId": key_id}, Version="2019-01-01"))[1]["Code"]
        == "InvalidVersion"
    )
    assert rpc_send(kms, rpc_sign("CreateKey", {}))[0] == 404
    assert kms.count(outcome="Success") == 0


def test_rpc_security_token(kms, key_id) -> None:
    sts = kms.issue_sts_token()
    ok = rpc_sign(
        "DescribeKey", {"KeyId": key_id, "SecurityToken": sts.security_token},
        ak=sts.access_key_id, sk=sts.access_key_secret,
    )  # fmt: skip
    assert rpc_send(kms, ok)[0] == 200
    no_token = rpc_sign(
        "DescribeKey", {"KeyId": key_id}, ak=sts.access_key_id, sk=sts.access_key_secret
    )
    assert rpc_send(kms, no_token)[1]["Code"] == "InvalidAccessKeyId.NotFound"
    kms.expire_sts_token(sts.security_token)
    expired = rpc_sign(
        "DescribeKey", {"KeyId": key_id, "SecurityToken": sts.security_token},
        ak=sts.access_key_id, sk=sts.access_key_secret,
    )  # fmt: skip
    assert rpc_send(kms, expired)[1]["Code"] == "InvalidSecurityToken.Expired"


# --------------------------------------------------------------------------- TLS


def test_tls_with_the_test_ca(tmp_path: Path) -> None:
    import ssl
    import urllib.error
    import urllib.request

    ca = make_test_ca(tmp_path / "ca")
    with FakeAlibabaKms(tls=ca) as kms:
        kms.add_access_key(AK, SECRET)
        key_id = kms.create_key()
        assert kms.endpoint == f"https://127.0.0.1:{kms.port}"
        client = Client(
            Config(
                access_key_id=AK, access_key_secret=SECRET, endpoint=kms.host,
                protocol="https", read_timeout=3000, ca=str(ca.ca_cert),
            )
        )  # fmt: skip
        blob = encrypt(client, key_id, b"over tls").ciphertext_blob
        assert base64.b64decode(decrypt(client, blob).plaintext) == b"over tls"
        trusting = ssl.create_default_context(cafile=str(ca.ca_cert))
        request = urllib.request.Request(  # noqa: S310 - the fake's https://127.0.0.1 URL
            kms.endpoint + rpc_sign("DescribeKey", {"KeyId": key_id}), method="POST", headers=FORM
        )
        with urllib.request.urlopen(request, context=trusting, timeout=5) as answer:  # noqa: S310 - 127.0.0.1
            assert json.loads(answer.read())["KeyMetadata"]["KeyId"] == key_id
        # a client without the test CA does not get through, and the fake keeps serving
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(request, context=ssl.create_default_context(), timeout=5)  # noqa: S310
        with pytest.raises((ssl.SSLError, ConnectionError)):
            send(kms.port, rpc_sign("DescribeKey", {"KeyId": key_id}), dict(FORM))  # plain HTTP
        assert base64.b64decode(decrypt(client, blob).plaintext) == b"over tls"


# --------------------------------------------------------------------------- script mode


def test_script_mode_serves_the_sdk() -> None:
    script = Path(__file__).with_name("alibaba_kms.py")
    with subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--alias", "alias/cli"],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            port = int(process.stdout.readline())
            info = json.loads(process.stdout.readline())
            assert info["endpoint"] == f"http://127.0.0.1:{port}"
            client = Client(
                Config(
                    access_key_id=info["access_key_id"],
                    access_key_secret=info["access_key_secret"],
                    endpoint=f"127.0.0.1:{port}",
                    protocol="http",
                    read_timeout=3000,
                )
            )
            out = encrypt(client, "alias/cli", b"cli")
            assert out.key_id == info["key_id"]
            assert base64.b64decode(decrypt(client, out.ciphertext_blob).plaintext) == b"cli"
        finally:
            process.terminate()
            assert process.wait(timeout=10) == 0
