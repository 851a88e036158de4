"""Alibaba provider pieces that need no server: errors, credentials order, formats."""

from __future__ import annotations

import base64
import os

import pytest

from kmsplug.errors import (
    ConfigError,
    InvalidCiphertext,
    ProviderRefused,
    ProviderThrottled,
    ProviderTransient,
)
from kmsplug.providers.alibaba.credentials import credential_source
from kmsplug.providers.alibaba.kek import classify_error, looks_like_ack_ciphertext
from kmsplug.providers.alibaba.settings import AlibabaSettings
from kmsplug.providers.shared import encryption_context_from

SETTINGS = AlibabaSettings(key="alias/k8s", region="cn-hangzhou")


class SdkError(Exception):
    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"{code}: secret detail")
        self.code, self.status_code, self.request_id = code, status, "req-1"


@pytest.mark.parametrize(
    ("code", "status", "kind", "hint"),
    [
        ("Rejected.Throttling", 429, ProviderThrottled, "quota"),
        ("Forbidden.RAM", 403, ProviderRefused, "kms:Encrypt"),
        ("Forbidden.NoPermission", 403, ProviderRefused, "kms:Encrypt"),
        ("Forbidden.KeyNotFound", 404, ProviderRefused, "region"),
        ("Forbidden.KeyStateUnsupported", 403, ProviderRefused, "disabled"),
        ("InvalidAccessKeyId.NotFound", 404, ProviderRefused, "credentials"),
        ("SignatureDoesNotMatch", 400, ProviderRefused, "credentials"),
        ("InvalidSecurityToken.Expired", 400, ProviderTransient, "STS"),
        ("InternalFailure", 500, ProviderTransient, "failed"),
        ("Rejected.ValueError", 400, InvalidCiphertext, "invalid"),
    ],
)
def test_errors_become_actionable_and_secret_free(
    code: str, status: int, kind: type[Exception], hint: str
) -> None:
    error = classify_error(SdkError(code, status), SETTINGS)
    assert isinstance(error, kind)
    assert hint in str(error)
    assert "secret detail" not in str(error)


def test_credential_order() -> None:
    both = {
        "ACCESS_KEY_ID": "LTAIack",
        "ACCESS_KEY_SECRET": "s1",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIstd",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s2",
    }
    assert credential_source(both).config["access_key_id"] == "LTAIack"
    sts = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "STS.x",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s",
        "ALIBABA_CLOUD_SECURITY_TOKEN": "tok",
    }
    assert credential_source(sts).kind == "sts"
    oidc = {
        "ALIBABA_CLOUD_ROLE_ARN": "acs:ram::1:role/r",
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": "acs:ram::1:oidc-provider/p",
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE": "/var/run/token",
    }
    assert credential_source(oidc).kind == "oidc_role_arn"
    uri = {"ALIBABA_CLOUD_CREDENTIALS_URI": "http://127.0.0.1:9/creds"}
    assert credential_source(uri).kind == "credentials_uri"
    assert credential_source({}).kind == "ecs_ram_role"
    described = credential_source(both).describe()
    assert "s1" not in described and "LTAIac" in described


def test_ack_ciphertext_is_recognised_and_ours_is_not() -> None:
    blob = base64.b64encode(os.urandom(90))
    assert looks_like_ack_ciphertext(blob)
    assert not looks_like_ack_ciphertext(b"\xc9k\x01" + os.urandom(60))
    assert not looks_like_ack_ciphertext(b"1" + os.urandom(60))


def test_encryption_context_forms() -> None:
    assert encryption_context_from('{"a": "b"}', "alibaba") == {"a": "b"}
    assert encryption_context_from("a=b, c=d", "alibaba") == {"a": "b", "c": "d"}
    assert encryption_context_from("", "alibaba") == {}
    for bad in ("novalue", "{not json", '["a"]', "=b"):
        with pytest.raises(ConfigError, match=r"^alibaba: the encryption context"):
            encryption_context_from(bad, "alibaba")


def test_default_endpoint_is_the_vpc_one() -> None:
    assert SETTINGS.host == "kms-vpc.cn-hangzhou.aliyuncs.com"


class Wrapped(Exception):
    """The SDK's way: its own exception, the transport's error as `inner_exception`."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__("GET http://kms/?Plaintext=c2VjcmV0 failed")  # a URL with data
        self.inner_exception = inner


@pytest.mark.parametrize(
    ("inner", "said"),
    [
        (TimeoutError("read timed out"), "did not answer in time (TimeoutError)"),
        (ConnectionRefusedError("refused"), "could not be reached (ConnectionRefusedError)"),
        (OSError("other"), "call failed (OSError)"),
    ],
)
def test_no_answer_says_how_and_shows_no_url(inner: BaseException, said: str) -> None:
    error = classify_error(Wrapped(inner), SETTINGS)
    assert isinstance(error, ProviderTransient)
    assert said in str(error) and "Plaintext" not in str(error)
