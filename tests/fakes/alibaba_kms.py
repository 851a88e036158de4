"""A strict, local, TEST-ONLY fake of the Alibaba Cloud KMS OpenAPI (version 2016-01-20).

It speaks both wire protocols of the official SDKs, answered with JSON:

- ACS3 (the Python SDK ``alibabacloud-kms20160120`` on ``alibabacloud-tea-openapi``, what
  kmsplug uses): ``POST /`` with every parameter in the query string, an empty body, the
  ``x-acs-*`` headers and an ``Authorization: ACS3-HMAC-SHA256 ...`` header;
- RPC style (the Go SDK ``alibaba-cloud-sdk-go``, what ack-kms-plugin uses): ``POST /``
  with every parameter, ``Signature`` included, in the query string (a form body is
  signed too), ``SignatureMethod=HMAC-SHA1``, ``SignatureVersion=1.0``.

Every request is authenticated like the real gateway, either way: the signature is
recomputed, the signing time (``x-acs-date`` or ``Timestamp``) must be within 15 minutes,
a signature nonce is accepted once, STS credentials must carry their security token and
must not have expired. ``FakeAlibabaKms(tls=make_test_ca(dir))`` serves HTTPS with a
throwaway CA (give clients ``ca.crt``, e.g. as SSL_CERT_FILE), since ack-kms-plugin
speaks nothing else.

Keys, aliases, credentials, permissions, quotas and faults are managed with methods on
:class:`FakeAlibabaKms` (never over HTTP). Only the standard library and ``cryptography``
are used, so the module also runs as a script::

    python tests/fakes/alibaba_kms.py --port 0

prints the port on the first line of stdout, a JSON line with the endpoint, the
credentials and the key id on the second, and serves until SIGINT/SIGTERM.

Ciphertext blobs are real AES-256-GCM (one random key per key version). A blob is the
standard base64 of::

    0x01 | len(key_id) | key_id | len(key_version_id) | key_version_id | nonce(12) | ct | tag(16)

so Decrypt needs no KeyId, like the real service. The header and the canonical JSON of the
EncryptionContext are the GCM additional data: a different context fails to decrypt.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import random
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ACTIONS",
    "API_VERSION",
    "AccessKeyCredential",
    "FakeAlibabaKms",
    "KeyInfo",
    "KmsError",
    "RequestRecord",
    "StsCredential",
    "TestCa",
    "make_test_ca",
]

API_VERSION = "2016-01-20"
SIGNATURE_ALGORITHM = "ACS3-HMAC-SHA256"
RPC_SIGNATURE_METHOD = "HMAC-SHA1"
RPC_SIGNATURE_VERSION = "1.0"
RPC_REQUIRED_PARAMETERS = (
    "Action",
    "Version",
    "AccessKeyId",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "Timestamp",
    "Signature",
)
MAX_CLOCK_SKEW_SECONDS = 15 * 60
MAX_PLAINTEXT_BYTES = 6 * 1024
MAX_ENCRYPTION_CONTEXT_CHARS = 8192
MAX_BODY_BYTES = 1 << 20
DEFAULT_ACCOUNT_ID = "1234567890123456"
DEFAULT_REGION = "cn-hangzhou"
DEFAULT_QPS = 1000.0

ACTIONS = frozenset({"Encrypt", "Decrypt", "DescribeKey", "GenerateDataKey"})

SYMMETRIC_KEY_SPECS = frozenset(
    {"Aliyun_AES_256", "Aliyun_AES_128", "Aliyun_AES_192", "Aliyun_SM4"}
)
ASYMMETRIC_KEY_SPECS = frozenset({"RSA_2048", "RSA_3072", "EC_P256", "EC_P256K", "EC_SM2"})
KEY_USAGES = frozenset({"ENCRYPT/DECRYPT", "SIGN/VERIFY"})
KEY_STATES = frozenset({"Enabled", "Disabled", "PendingDeletion"})

_BLOB_FORMAT = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_ERROR_CONTENT_TYPE = "application/json;charset=utf-8"


# --------------------------------------------------------------------------- errors


class KmsError(Exception):
    """An error answer: HTTP status plus the ``Code``/``Message`` of the JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _missing(name: str) -> KmsError:
    return KmsError(400, "MissingParameter", f'The parameter "{name}" is needed but not provided.')


def _invalid(name: str) -> KmsError:
    return KmsError(400, "InvalidParameter", f'The specified parameter "{name}" is not valid.')


def _incomplete(detail: str) -> KmsError:
    return KmsError(
        400,
        "IncompleteSignature",
        f"The request signature does not conform to Aliyun standards. {detail}",
    )


ERR_UNSUPPORTED_METHOD = (403, "UnsupportedHTTPMethod", "This http method is not supported.")
ERR_ACTION_NOT_FOUND = (
    404,
    "InvalidAction.NotFound",
    "Specified api is not found, please check your url and method.",
)
ERR_INVALID_VERSION = (400, "InvalidVersion", "Specified parameter Version is not valid.")
ERR_AK_NOT_FOUND = (404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
ERR_AK_INACTIVE = (400, "InvalidAccessKeyId.Inactive", "Specified access key is disabled.")
ERR_TOKEN_MALFORMED = (
    400,
    "InvalidSecurityToken.Malformed",
    "Specified SecurityToken is malformed.",
)
ERR_TOKEN_MISMATCH = (
    400,
    "InvalidSecurityToken.MismatchWithAccessKey",
    "Specified SecurityToken mismatch with the AccessKey.",
)
ERR_TOKEN_EXPIRED = (403, "InvalidSecurityToken.Expired", "Specified SecurityToken is expired.")
ERR_TIMESTAMP_FORMAT = (
    400,
    "InvalidTimeStamp.Format",
    "Specified time stamp or date value is not well formatted.",
)
ERR_TIMESTAMP_EXPIRED = (
    400,
    "InvalidTimeStamp.Expired",
    "Specified time stamp or date value is expired.",
)
ERR_NONCE_USED = (400, "SignatureNonceUsed", "Specified signature nonce was used already.")
ERR_THROTTLED = (429, "Rejected.Throttling", "QPS Limit Exceeded")
ERR_FORBIDDEN_RAM = (
    403,
    "Forbidden.RAM",
    "User not authorized to operate on the specified resource, or this API doesn't support RAM.",
)
ERR_KEY_NOT_FOUND = (404, "Forbidden.KeyNotFound", "The specified Key is not found.")
ERR_KEY_VERSION_NOT_FOUND = (
    404,
    "Forbidden.KeyVersionNotFound",
    "The specified Key version is not found.",
)
ERR_ALIAS_NOT_FOUND = (404, "Forbidden.AliasNotFound", "The specified Alias is not found.")
ERR_KEY_DISABLED = (
    409,
    "Rejected.Disabled",
    "The request was rejected because the key state is Disabled.",
)
ERR_KEY_PENDING_DELETION = (
    409,
    "Rejected.PendingDeletion",
    "The request was rejected because the key state is PendingDeletion.",
)
ERR_UNSUPPORTED_OPERATION = (400, "Rejected.UnsupportedOperation", "Unsupported operation.")
ERR_DRY_RUN = (
    400,
    "DryRunOperation",
    "Request validation has been passed with DryRun flag set.",
)
ERR_SERVICE_UNAVAILABLE = (503, "ServiceUnavailableTemporary", "Service Unavailable Temporary.")


def _err(spec: tuple[int, str, str]) -> KmsError:
    return KmsError(*spec)


# --------------------------------------------------------------------------- public records


@dataclasses.dataclass(frozen=True)
class AccessKeyCredential:
    """A long-lived AccessKey pair of a RAM user (or the account)."""

    access_key_id: str
    access_key_secret: str
    account_id: str


@dataclasses.dataclass(frozen=True)
class StsCredential:
    """Temporary STS credentials: AccessKey pair, security token and expiry (epoch s)."""

    access_key_id: str
    access_key_secret: str
    security_token: str
    expiration: float
    account_id: str

    @property
    def expiration_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.expiration, dt.UTC).strftime(_DATE_FORMAT)


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """A snapshot of a key as the admin API sees it."""

    key_id: str
    account_id: str
    key_spec: str
    key_usage: str
    key_state: str
    primary_key_version: str
    key_versions: tuple[str, ...]
    aliases: tuple[str, ...]
    arn: str


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One answered (or dropped) request, for assertions in tests."""

    action: str
    access_key_id: str | None
    status: int | None  # None: the connection was dropped without an answer
    outcome: str  # "Success" or the error Code
    request_id: str | None


# --------------------------------------------------------------------------- internals


@dataclasses.dataclass
class _Principal:
    access_key_id: str
    secret: str
    account_id: str
    allowed_actions: frozenset[str] | None  # None: every action
    enabled: bool = True
    token: str | None = None
    expiration: float | None = None


@dataclasses.dataclass
class _KeyVersion:
    version_id: str
    material: bytes
    created: float


@dataclasses.dataclass
class _Key:
    key_id: str
    account_id: str
    spec: str
    usage: str
    description: str
    protection_level: str
    created: float
    state: str = "Enabled"
    versions: dict[str, _KeyVersion] = dataclasses.field(default_factory=dict)
    primary: str = ""
    last_rotation: float | None = None
    delete_date: float | None = None


@dataclasses.dataclass
class _InjectedFault:
    remaining: int
    status: int
    code: str
    message: str
    actions: frozenset[str] | None
    drop_connection: bool


class _Bucket:
    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclasses.dataclass
class _Response:
    status: int
    body: bytes
    request_id: str


class _Drop:
    """Close the connection without any answer."""


_DROP = _Drop()


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime(_DATE_FORMAT)


def _rfc3986(value: str) -> str:
    return quote(value, safe="~")


def _is_rpc_signed(target: str, headers: Message) -> bool:
    """An RPC-style request: no Authorization header, a Signature parameter instead."""
    if headers.get("authorization"):
        return False
    return any(name == "Signature" for name, _ in parse_qsl(urlsplit(target).query))


def _action_of(target: str, headers: Message) -> str:
    """ACS3 names the action in a header, the RPC style in the Action parameter."""
    if _is_rpc_signed(target, headers):
        for name, value in parse_qsl(urlsplit(target).query):
            if name == "Action":
                return value
        return "<none>"
    return headers.get("x-acs-action") or "<none>"


def _rpc_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """METHOD&%2F&encode(k1=v1&k2=v2...), every parameter but Signature, sorted by name."""
    canonical = "&".join(
        f"{_rfc3986(k)}={_rfc3986(v)}" for k, v in sorted(params.items()) if k != "Signature"
    )
    return f"{method}&{_rfc3986('/')}&{_rfc3986(canonical)}"


def _b64decode_strict(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _invalid(name) from None


def _canonical_context(raw: str | None) -> bytes:
    """The EncryptionContext as canonical JSON: equal maps give equal bytes."""
    if raw is None or raw == "":
        return b"{}"
    if len(raw) > MAX_ENCRYPTION_CONTEXT_CHARS:
        raise _invalid("EncryptionContext")
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise _invalid("EncryptionContext") from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise _invalid("EncryptionContext")
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _blob_header(key_id: str, version_id: str) -> bytes:
    kid, vid = key_id.encode(), version_id.encode()
    return bytes([_BLOB_FORMAT, len(kid)]) + kid + bytes([len(vid)]) + vid


def _parse_blob(raw: bytes) -> tuple[str, str, bytes, bytes, bytes]:
    """-> key_id, version_id, header (AAD prefix), nonce, ciphertext+tag."""
    try:
        if raw[0] != _BLOB_FORMAT:
            raise ValueError("format")
        pos = 1
        klen = raw[pos]
        key_id = raw[pos + 1 : pos + 1 + klen].decode("ascii")
        pos += 1 + klen
        vlen = raw[pos]
        version_id = raw[pos + 1 : pos + 1 + vlen].decode("ascii")
        pos += 1 + vlen
        header = raw[:pos]
        nonce = raw[pos : pos + _NONCE_BYTES]
        sealed = raw[pos + _NONCE_BYTES :]
        if len(key_id) != klen or len(version_id) != vlen or len(nonce) != _NONCE_BYTES:
            raise ValueError("truncated")
        if len(sealed) < _TAG_BYTES:
            raise ValueError("truncated")
    except (IndexError, ValueError, UnicodeDecodeError):
        raise _invalid("CiphertextBlob") from None
    return key_id, version_id, header, nonce, sealed


# --------------------------------------------------------------------------- TLS


@dataclasses.dataclass(frozen=True)
class TestCa:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost it issued."""

    __test__ = False  # not a pytest test class

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def make_test_ca(directory: Path) -> TestCa:
    """Write ca.crt, server.crt and server.key (EC P-256, valid a day) to `directory`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fake-alibaba-kms-test-ca"))
        .issuer_name(name("fake-alibaba-kms-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return TestCa(ca_path, cert_path, key_path)


# --------------------------------------------------------------------------- the fake


class FakeAlibabaKms:
    """A local fake KMS endpoint. ``start()`` serves it on 127.0.0.1 in a thread.

    Admin methods (thread-safe, never over HTTP): credentials
    (:meth:`add_access_key`, :meth:`issue_sts_token`, :meth:`set_allowed_actions`,
    :meth:`set_access_key_enabled`, :meth:`expire_sts_token`), keys (:meth:`create_key`,
    :meth:`create_alias`, :meth:`delete_alias`, :meth:`rotate_key`, :meth:`set_key_state`,
    :meth:`delete_key`, :meth:`describe`), quota (:meth:`set_qps`), faults
    (:meth:`set_latency`, :meth:`inject_errors`, :meth:`set_fault_hook`, :meth:`set_hang`)
    and observability (:meth:`count`, :attr:`call_counts`, :attr:`request_ids`,
    :attr:`requests`, :meth:`reset_stats`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT_ID,
        qps: float = DEFAULT_QPS,
        burst: float | None = None,
        max_clock_skew: float = MAX_CLOCK_SKEW_SECONDS,
        tls: TestCa | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fake binds to loopback only")
        self._bind = (host, port)
        self.tls = tls
        self.region = region
        self.account_id = account_id
        self.max_clock_skew = max_clock_skew
        self._lock = threading.RLock()
        self._hang_cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # credentials
        self._access_keys: dict[str, _Principal] = {}
        self._sts_by_token: dict[str, _Principal] = {}
        self._nonces: dict[str, float] = {}
        self._nonce_purge_at = 0.0
        # keys
        self._keys: dict[str, _Key] = {}
        self._aliases: dict[tuple[str, str], str] = {}  # (account, alias) -> key id
        # quota
        self._default_qps = float(qps)
        self._default_burst = float(burst) if burst is not None else None
        self._account_qps: dict[str, tuple[float, float | None]] = {}
        self._buckets: dict[str, _Bucket] = {}
        # faults
        self._latency = (0.0, 0.0)
        self._faults: list[_InjectedFault] = []
        self._fault_hook: Callable[[str], tuple[int, str, str] | None] | None = None
        self._hang = False
        self._hanging = 0
        # observability
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._request_ids: list[str] = []
        self._records: list[RequestRecord] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeAlibabaKms:
        if self._server is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self._server = _Server(self._bind, _Handler, self)
        if self.tls is not None:
            self._server.tls = self.tls.server_context()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-alibaba-kms",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; hung and delayed requests are dropped without an answer."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        with self._hang_cond:
            self._hang_cond.notify_all()
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout)
        server.join_handlers(timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeAlibabaKms:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the SDK's ``endpoint`` (protocol ``self.protocol``), or
        ack-kms-plugin's ACK_KMS_DOMAIN."""
        return f"127.0.0.1:{self.port}"

    @property
    def protocol(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.protocol}://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ credentials

    def add_access_key(
        self,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        *,
        account_id: str | None = None,
        allowed_actions: Iterable[str] | None = None,
    ) -> AccessKeyCredential:
        """Register a static AccessKey; ``allowed_actions=None`` allows every action."""
        ak = access_key_id or "LTAI" + secrets.token_hex(10)
        secret = access_key_secret or secrets.token_urlsafe(24)
        account = account_id or self.account_id
        with self._lock:
            if ak in self._access_keys or any(
                p.access_key_id == ak for p in self._sts_by_token.values()
            ):
                raise ValueError(f"access key {ak!r} exists")
            self._access_keys[ak] = _Principal(ak, secret, account, _actions(allowed_actions))
        return AccessKeyCredential(ak, secret, account)

    def issue_sts_token(
        self,
        *,
        ttl: float = 3600.0,
        account_id: str | None = None,
        allowed_actions: Iterable[str] | None = None,
    ) -> StsCredential:
        """Issue temporary credentials (``STS.`` AccessKey, secret, token) valid ``ttl`` s.

        A negative ``ttl`` issues credentials that have already expired.
        """
        ak = "STS.NU" + secrets.token_hex(12)
        secret = secrets.token_urlsafe(24)
        token = "CAIS" + base64.b64encode(secrets.token_bytes(96)).decode()
        account = account_id or self.account_id
        expiration = time.time() + ttl
        with self._lock:
            self._sts_by_token[token] = _Principal(
                ak, secret, account, _actions(allowed_actions), token=token, expiration=expiration
            )
        return StsCredential(ak, secret, token, expiration, account)

    def expire_sts_token(self, security_token: str) -> None:
        with self._lock:
            self._sts_by_token[security_token].expiration = time.time() - 1.0

    def set_allowed_actions(self, access_key_id: str, actions: Iterable[str] | None) -> None:
        """RAM policy of a credential: the KMS actions it may call (None: all)."""
        with self._lock:
            self._principal_by_ak(access_key_id).allowed_actions = _actions(actions)

    def set_access_key_enabled(self, access_key_id: str, enabled: bool) -> None:
        with self._lock:
            self._principal_by_ak(access_key_id).enabled = enabled

    def _principal_by_ak(self, access_key_id: str) -> _Principal:
        if access_key_id in self._access_keys:
            return self._access_keys[access_key_id]
        for principal in self._sts_by_token.values():
            if principal.access_key_id == access_key_id:
                return principal
        raise KeyError(access_key_id)

    # ------------------------------------------------------------------ keys

    def create_key(
        self,
        *,
        key_spec: str = "Aliyun_AES_256",
        key_usage: str = "ENCRYPT/DECRYPT",
        key_id: str | None = None,
        description: str = "",
        protection_level: str = "SOFTWARE",
        account_id: str | None = None,
    ) -> str:
        """Create an Enabled key with one version; returns its KeyId."""
        if key_spec not in SYMMETRIC_KEY_SPECS | ASYMMETRIC_KEY_SPECS:
            raise ValueError(f"unknown KeySpec {key_spec!r}")
        if key_usage not in KEY_USAGES:
            raise ValueError(f"unknown KeyUsage {key_usage!r}")
        if key_spec in SYMMETRIC_KEY_SPECS and key_usage != "ENCRYPT/DECRYPT":
            raise ValueError("symmetric keys are ENCRYPT/DECRYPT only")
        if protection_level not in ("SOFTWARE", "HSM"):
            raise ValueError("ProtectionLevel is SOFTWARE or HSM")
        kid = key_id or str(uuid.uuid4())
        if not 0 < len(kid) < 128 or not kid.isascii():
            raise ValueError("bad key id")
        with self._lock:
            if kid in self._keys:
                raise ValueError(f"key {kid!r} exists")
            key = _Key(
                key_id=kid,
                account_id=account_id or self.account_id,
                spec=key_spec,
                usage=key_usage,
                description=description,
                protection_level=protection_level,
                created=time.time(),
            )
            self._keys[kid] = key
            self._add_version(key)
        return kid

    def _add_version(self, key: _Key) -> str:
        version = _KeyVersion(str(uuid.uuid4()), AESGCM.generate_key(bit_length=256), time.time())
        key.versions[version.version_id] = version
        key.primary = version.version_id
        return version.version_id

    def rotate_key(self, key_id: str) -> str:
        """Add a key version and make it primary; old versions still decrypt."""
        with self._lock:
            key = self._admin_key(key_id)
            version_id = self._add_version(key)
            key.last_rotation = time.time()
            return version_id

    def create_alias(self, alias_name: str, key_id: str) -> None:
        if not alias_name.startswith("alias/") or len(alias_name) <= len("alias/"):
            raise ValueError("alias names start with 'alias/'")
        with self._lock:
            key = self._admin_key(key_id)
            slot = (key.account_id, alias_name)
            if slot in self._aliases:
                raise ValueError(f"alias {alias_name!r} exists")
            self._aliases[slot] = key.key_id

    def delete_alias(self, alias_name: str, *, account_id: str | None = None) -> None:
        with self._lock:
            del self._aliases[(account_id or self.account_id, alias_name)]

    def set_key_state(self, key_id: str, state: str) -> None:
        """Enabled, Disabled or PendingDeletion (deletion date seven days ahead)."""
        if state not in KEY_STATES:
            raise ValueError(f"unknown key state {state!r}")
        with self._lock:
            key = self._admin_key(key_id)
            key.state = state
            key.delete_date = time.time() + 7 * 86400 if state == "PendingDeletion" else None

    def delete_key(self, key_id: str) -> None:
        """Remove the key, its versions and aliases: its blobs can never decrypt again."""
        with self._lock:
            key = self._keys.pop(key_id)
            for slot in [s for s, k in self._aliases.items() if k == key.key_id]:
                del self._aliases[slot]

    def describe(self, key_id: str) -> KeyInfo:
        with self._lock:
            key = self._admin_key(key_id)
            return KeyInfo(
                key_id=key.key_id,
                account_id=key.account_id,
                key_spec=key.spec,
                key_usage=key.usage,
                key_state=key.state,
                primary_key_version=key.primary,
                key_versions=tuple(key.versions),
                aliases=tuple(sorted(a for (_, a), k in self._aliases.items() if k == key.key_id)),
                arn=self._arn(key),
            )

    def _admin_key(self, key_id: str) -> _Key:
        if key_id.startswith("alias/"):
            key_id = self._aliases[(self.account_id, key_id)]
        return self._keys[key_id]

    def _arn(self, key: _Key) -> str:
        return f"acs:kms:{self.region}:{key.account_id}:key/{key.key_id}"

    # ------------------------------------------------------------------ quota

    def set_qps(
        self, qps: float, *, burst: float | None = None, account_id: str | None = None
    ) -> None:
        """Token bucket per account: ``qps`` tokens a second, ``burst`` deep (default: qps).

        Without ``account_id`` it sets the default of every account and refills all buckets.
        """
        if qps <= 0 or (burst is not None and burst < 1):
            raise ValueError("qps must be > 0 and burst >= 1")
        with self._lock:
            if account_id is None:
                self._default_qps, self._default_burst = float(qps), burst
                self._account_qps.clear()
                self._buckets.clear()
            else:
                self._account_qps[account_id] = (float(qps), burst)
                self._buckets.pop(account_id, None)

    def _take_token(self, account_id: str) -> bool:
        bucket = self._buckets.get(account_id)
        if bucket is None:
            qps, burst = self._account_qps.get(account_id, (self._default_qps, self._default_burst))
            bucket = self._buckets[account_id] = _Bucket(qps, burst if burst else max(qps, 1.0))
        return bucket.take()

    # ------------------------------------------------------------------ faults

    def set_latency(self, fixed: float = 0.0, jitter: float = 0.0) -> None:
        """Delay every answer by ``fixed`` + uniform(0, ``jitter``) seconds."""
        if fixed < 0 or jitter < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency = (fixed, jitter)

    def inject_errors(
        self,
        count: int = 1,
        *,
        status: int = 503,
        code: str = "ServiceUnavailableTemporary",
        message: str = "Service Unavailable Temporary.",
        actions: Iterable[str] | None = None,
        drop_connection: bool = False,
    ) -> None:
        """Fail the next ``count`` requests (of ``actions``, default all) before auth.

        With ``drop_connection`` the connection is closed with no answer at all.
        Rules queue up: each request consumes the first rule that matches it.
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(
                _InjectedFault(count, status, code, message, _actions(actions), drop_connection)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fault_hook = None
            self._latency = (0.0, 0.0)
        self.set_hang(False)

    def set_fault_hook(self, hook: Callable[[str], tuple[int, str, str] | None] | None) -> None:
        """``hook(action)`` runs for every request; a (status, code, message) fails it."""
        with self._lock:
            self._fault_hook = hook

    def set_hang(self, hang: bool) -> None:
        """While on, requests are read and never answered (until cleared, or stop())."""
        with self._hang_cond:
            self._hang = hang
            self._hang_cond.notify_all()

    @property
    def hanging(self) -> int:
        """How many requests are held by hang mode right now."""
        with self._lock:
            return self._hanging

    # ------------------------------------------------------------------ observability

    @property
    def call_counts(self) -> dict[tuple[str, str], int]:
        """{(action, outcome): n}; outcome is "Success", an error Code, "Dropped" or "Hung"."""
        with self._lock:
            return dict(self._counts)

    def count(self, action: str | None = None, outcome: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (a, o), n in self._counts.items()
                if (action is None or a == action) and (outcome is None or o == outcome)
            )

    @property
    def request_ids(self) -> list[str]:
        """RequestIds of every answer, in order (errors included)."""
        with self._lock:
            return list(self._request_ids)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def reset_stats(self) -> None:
        with self._lock:
            self._counts.clear()
            self._request_ids.clear()
            self._records.clear()

    def _record(
        self,
        action: str,
        ak: str | None,
        status: int | None,
        outcome: str,
        request_id: str | None,
    ) -> None:
        with self._lock:
            self._counts[(action, outcome)] += 1
            if request_id is not None:
                self._request_ids.append(request_id)
            self._records.append(RequestRecord(action, ak, status, outcome, request_id))

    # ------------------------------------------------------------------ request pipeline

    def _process(
        self, method: str, target: str, headers: Message, body: bytes
    ) -> _Response | _Drop:
        action = _action_of(target, headers)
        if not self._wait_out_hang(action):
            return _DROP
        fixed, jitter = self._latency
        delay = fixed + (random.uniform(0.0, jitter) if jitter else 0.0)
        if delay and self._stopping.wait(delay):
            self._record(action, None, None, "Dropped", None)
            return _DROP
        request_id = str(uuid.uuid4())
        principal: _Principal | None = None
        try:
            injected = self._take_fault(action)
            if injected is _DROP:
                self._record(action, None, None, "Dropped", None)
                return _DROP
            if isinstance(injected, KmsError):
                raise injected
            principal = self._authenticate(method, target, headers, body, action)
            params = self._params(target, headers, body)
            with self._lock:
                if not self._take_token(principal.account_id):
                    raise _err(ERR_THROTTLED)
                allowed = principal.allowed_actions
            if allowed is not None and action not in allowed:
                raise _err(ERR_FORBIDDEN_RAM)
            result = self._dispatch(action, params, principal)
        except KmsError as error:
            ak = principal.access_key_id if principal else None
            self._record(action, ak, error.status, error.code, request_id)
            body_out = {
                "RequestId": request_id,
                "HostId": headers.get("host", ""),
                "Code": error.code,
                "Message": error.message,
                "Recommend": f"https://api.aliyun.com/troubleshoot?q={error.code}",
            }
            return _Response(error.status, json.dumps(body_out).encode(), request_id)
        result["RequestId"] = request_id
        self._record(action, principal.access_key_id, 200, "Success", request_id)
        return _Response(200, json.dumps(result).encode(), request_id)

    def _wait_out_hang(self, action: str) -> bool:
        with self._hang_cond:
            if not self._hang:
                return not self._stopping.is_set()
            self._counts[(action, "Hung")] += 1
            self._hanging += 1
            try:
                while self._hang and not self._stopping.is_set():
                    self._hang_cond.wait(0.5)
            finally:
                self._hanging -= 1
            return not self._stopping.is_set()

    def _take_fault(self, action: str) -> KmsError | _Drop | None:
        with self._lock:
            for fault in self._faults:
                if fault.actions is None or action in fault.actions:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    if fault.drop_connection:
                        return _DROP
                    return KmsError(fault.status, fault.code, fault.message)
            hook = self._fault_hook
        if hook is not None:
            verdict = hook(action)
            if verdict is not None:
                return KmsError(*verdict)
        return None

    # ------------------------------------------------------------------ authentication

    def _authenticate(
        self, method: str, target: str, headers: Message, body: bytes, action: str
    ) -> _Principal:
        if _is_rpc_signed(target, headers):
            return self._authenticate_rpc(method, target, headers, body, action)
        return self._authenticate_acs3(method, target, headers, body, action)

    def _authenticate_rpc(
        self, method: str, target: str, headers: Message, body: bytes, action: str
    ) -> _Principal:
        """RPC-style signature (SignatureVersion 1.0, HMAC-SHA1), as the Go SDK of 2020-2024
        that ack-kms-plugin uses sends it: every parameter in the query string (or a form
        body), the signature over all of them, sorted and percent-encoded."""
        if method not in ("POST", "GET"):
            raise _err(ERR_UNSUPPORTED_METHOD)
        split = urlsplit(target)
        if split.path != "/":
            raise _err(ERR_ACTION_NOT_FOUND)
        params = self._params(target, headers, body)
        for name in RPC_REQUIRED_PARAMETERS:
            if not params.get(name):
                raise _missing(name)
        if params["Version"] != API_VERSION:
            raise _err(ERR_INVALID_VERSION)
        if action not in ACTIONS:
            raise _err(ERR_ACTION_NOT_FOUND)
        if params["SignatureMethod"] != RPC_SIGNATURE_METHOD:
            raise _incomplete(f"Unsupported SignatureMethod {params['SignatureMethod']!r}.")
        if params["SignatureVersion"] != RPC_SIGNATURE_VERSION:
            raise _incomplete(f"Unsupported SignatureVersion {params['SignatureVersion']!r}.")
        if params.get("Format", "JSON").upper() != "JSON":
            raise _invalid("Format")
        try:
            sent_at = dt.datetime.strptime(params["Timestamp"], _DATE_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            raise _err(ERR_TIMESTAMP_FORMAT) from None
        principal = self._principal(params["AccessKeyId"], params.get("SecurityToken"))
        string_to_sign = _rpc_string_to_sign(method, params)
        expected = base64.b64encode(
            hmac.new(
                (principal.secret + "&").encode(), string_to_sign.encode(), hashlib.sha1
            ).digest()
        ).decode()
        if not hmac.compare_digest(expected, params["Signature"]):
            raise KmsError(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation. "
                f"server string to sign is:{string_to_sign}",
            )
        self._check_fresh(sent_at, params["SignatureNonce"])
        return principal

    def _principal(self, ak: str, token: str | None) -> _Principal:
        """The credential an AccessKeyId (and STS token) names, if it may sign now."""
        with self._lock:
            if token is not None:
                principal = self._sts_by_token.get(token)
                if principal is None:
                    raise _err(ERR_TOKEN_MALFORMED)
                if principal.access_key_id != ak:
                    raise _err(ERR_TOKEN_MISMATCH)
                if principal.expiration is not None and time.time() >= principal.expiration:
                    raise _err(ERR_TOKEN_EXPIRED)
            else:
                found = self._access_keys.get(ak)
                if found is None:
                    raise _err(ERR_AK_NOT_FOUND)
                principal = found
            if not principal.enabled:
                raise _err(ERR_AK_INACTIVE)
            return principal

    def _check_fresh(self, sent_at: dt.datetime, nonce: str) -> None:
        """A signed request is good once, and only near the time it says it was signed."""
        now = time.time()
        if abs(now - sent_at.timestamp()) > self.max_clock_skew:
            raise _err(ERR_TIMESTAMP_EXPIRED)
        with self._lock:
            if now >= self._nonce_purge_at:
                self._nonces = {n: t for n, t in self._nonces.items() if t > now}
                self._nonce_purge_at = now + 60.0
            if self._nonces.get(nonce, 0.0) > now:
                raise _err(ERR_NONCE_USED)
            self._nonces[nonce] = now + 2 * self.max_clock_skew

    def _authenticate_acs3(
        self, method: str, target: str, headers: Message, body: bytes, action: str
    ) -> _Principal:
        if method != "POST":
            raise _err(ERR_UNSUPPORTED_METHOD)
        split = urlsplit(target)
        if split.path != "/":
            raise _err(ERR_ACTION_NOT_FOUND)
        version = headers.get("x-acs-version")
        if version is None:
            raise _missing("x-acs-version")
        if version != API_VERSION:
            raise _err(ERR_INVALID_VERSION)
        if headers.get("x-acs-action") is None:
            raise _missing("x-acs-action")
        if action not in ACTIONS:
            raise _err(ERR_ACTION_NOT_FOUND)

        authorization = headers.get("authorization")
        if not authorization:
            raise _incomplete("The Authorization header is missing.")
        algorithm, _, rest = authorization.partition(" ")
        if algorithm != SIGNATURE_ALGORITHM:
            raise _incomplete(f"Unsupported signature algorithm {algorithm!r}.")
        fields: dict[str, str] = {}
        for part in rest.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep or name in fields or not value:
                raise _incomplete("The Authorization header is malformed.")
            fields[name] = value
        if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
            raise _incomplete("The Authorization header is malformed.")
        signed_headers = fields["SignedHeaders"].split(";")
        if signed_headers != sorted(set(signed_headers)) or any(
            not h or h != h.lower() for h in signed_headers
        ):
            raise _incomplete("SignedHeaders must be lowercase, unique and sorted.")
        present = {name.lower() for name in headers}
        # Content-Type need not be signed: the SDK's async (aiohttp) path sends an unsigned
        # "application/octet-stream" with its empty body.
        required = {"host"} | {h for h in present if h.startswith("x-acs-")}
        if not required <= set(signed_headers):
            missing = ", ".join(sorted(required - set(signed_headers)))
            raise _incomplete(f"These headers must be signed: {missing}.")
        if "authorization" in signed_headers:
            raise _incomplete("The Authorization header cannot be signed.")
        for name in signed_headers:
            if name not in present:
                raise _incomplete(f"The signed header {name} is not in the request.")
        for name in ("x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"):
            if not headers.get(name):
                raise _incomplete(f"The header {name} is missing.")

        raw_date = headers["x-acs-date"]
        try:
            sent_at = dt.datetime.strptime(raw_date, _DATE_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            raise _err(ERR_TIMESTAMP_FORMAT) from None

        ak = fields["Credential"]
        header_ak = headers.get("x-acs-accesskey-id")
        if header_ak is not None and header_ak != ak:
            raise _incomplete("x-acs-accesskey-id does not match the Credential.")
        principal = self._principal(ak, headers.get("x-acs-security-token"))
        secret = principal.secret

        string_to_sign = self._string_to_sign(method, split.query, headers, signed_headers, body)
        expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
        if (
            not hmac.compare_digest(expected, fields["Signature"])
            or headers["x-acs-content-sha256"] != hashlib.sha256(body).hexdigest()
        ):
            raise KmsError(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation. "
                f"server string to sign is:{string_to_sign}",
            )

        self._check_fresh(sent_at, headers["x-acs-signature-nonce"])
        return principal

    @staticmethod
    def _string_to_sign(
        method: str, query: str, headers: Message, signed_headers: list[str], body: bytes
    ) -> str:
        pairs = parse_qsl(query, keep_blank_values=True)
        canonical_query = "&".join(
            f"{_rfc3986(k)}={_rfc3986(v)}" for k, v in sorted(pairs, key=lambda kv: kv[0])
        )
        canonical_headers = "".join(
            f"{name}:{','.join(sorted(v.strip() for v in headers.get_all(name, [])))}\n"
            for name in signed_headers
        )
        canonical_request = "\n".join(
            [
                method,
                "/",
                canonical_query,
                canonical_headers,
                ";".join(signed_headers),
                hashlib.sha256(body).hexdigest(),
            ]
        )
        digest = hashlib.sha256(canonical_request.encode()).hexdigest()
        return f"{SIGNATURE_ALGORITHM}\n{digest}"

    @staticmethod
    def _params(target: str, headers: Message, body: bytes) -> dict[str, str]:
        params: dict[str, str] = {}
        sources = [parse_qsl(urlsplit(target).query, keep_blank_values=True)]
        if body:
            content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
            if content_type != "application/x-www-form-urlencoded":
                raise _invalid("Content-Type")
            sources.append(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        for pairs in sources:
            for name, value in pairs:
                if name in params:
                    raise _invalid(name)
                params[name] = value
        return params

    # ------------------------------------------------------------------ actions

    def _dispatch(
        self, action: str, params: dict[str, str], principal: _Principal
    ) -> dict[str, Any]:
        handler = {
            "Encrypt": self._encrypt,
            "Decrypt": self._decrypt,
            "DescribeKey": self._describe_key,
            "GenerateDataKey": self._generate_data_key,
        }[action]
        return handler(params, principal.account_id, params.get("DryRun") == "true")

    def _resolve(self, account: str, key_ref: str) -> _Key:
        if key_ref.startswith("alias/"):
            key_id = self._aliases.get((account, key_ref))
            if key_id is None:
                raise _err(ERR_ALIAS_NOT_FOUND)
        elif key_ref.startswith("acs:kms:"):
            key_id = key_ref.rpartition(":key/")[2]
        else:
            key_id = key_ref
        key = self._keys.get(key_id)
        if key is None or key.account_id != account:
            raise _err(ERR_KEY_NOT_FOUND)
        return key

    @staticmethod
    def _check_crypto(key: _Key) -> None:
        if key.spec not in SYMMETRIC_KEY_SPECS or key.usage != "ENCRYPT/DECRYPT":
            raise _err(ERR_UNSUPPORTED_OPERATION)
        if key.state == "Disabled":
            raise _err(ERR_KEY_DISABLED)
        if key.state == "PendingDeletion":
            raise _err(ERR_KEY_PENDING_DELETION)

    @staticmethod
    def _required(params: Mapping[str, str], name: str) -> str:
        value = params.get(name)
        if not value:
            raise _missing(name)
        return value

    def _seal(self, key: _Key, plaintext: bytes, context: bytes) -> tuple[str, str]:
        version = key.versions[key.primary]
        header = _blob_header(key.key_id, version.version_id)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(version.material).encrypt(nonce, plaintext, header + context)
        return base64.b64encode(header + nonce + sealed).decode(), version.version_id

    def _encrypt(self, params: Mapping[str, str], account: str, dry_run: bool) -> dict[str, Any]:
        key_ref = self._required(params, "KeyId")
        plaintext_b64 = self._required(params, "Plaintext")
        context = _canonical_context(params.get("EncryptionContext"))
        plaintext = _b64decode_strict(plaintext_b64, "Plaintext")
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise _invalid("Plaintext")
        with self._lock:
            key = self._resolve(account, key_ref)
            self._check_crypto(key)
            if dry_run:
                raise _err(ERR_DRY_RUN)
            blob, version_id = self._seal(key, plaintext, context)
        return {"KeyId": key.key_id, "KeyVersionId": version_id, "CiphertextBlob": blob}

    def _decrypt(self, params: Mapping[str, str], account: str, dry_run: bool) -> dict[str, Any]:
        raw = _b64decode_strict(self._required(params, "CiphertextBlob"), "CiphertextBlob")
        context = _canonical_context(params.get("EncryptionContext"))
        key_id, version_id, header, nonce, sealed = _parse_blob(raw)
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.account_id != account:
                raise _err(ERR_KEY_NOT_FOUND)
            version = key.versions.get(version_id)
            if version is None:
                raise _err(ERR_KEY_VERSION_NOT_FOUND)
            self._check_crypto(key)
            if dry_run:
                raise _err(ERR_DRY_RUN)
            material = version.material
        try:
            plaintext = AESGCM(material).decrypt(nonce, sealed, header + context)
        except InvalidTag:
            raise _invalid("CiphertextBlob") from None
        return {
            "KeyId": key_id,
            "KeyVersionId": version_id,
            "Plaintext": base64.b64encode(plaintext).decode(),
        }

    def _describe_key(
        self, params: Mapping[str, str], account: str, dry_run: bool
    ) -> dict[str, Any]:
        key_ref = self._required(params, "KeyId")
        with self._lock:
            key = self._resolve(account, key_ref)
            if dry_run:
                raise _err(ERR_DRY_RUN)
            metadata = {
                "KeyId": key.key_id,
                "Arn": self._arn(key),
                "CreationDate": _iso(key.created),
                "Creator": key.account_id,
                "Description": key.description,
                "KeyState": key.state,
                "KeyUsage": key.usage,
                "KeySpec": key.spec,
                "Origin": "Aliyun_KMS",
                "ProtectionLevel": key.protection_level,
                "PrimaryKeyVersion": key.primary,
                "AutomaticRotation": "Disabled",
                "LastRotationDate": _iso(key.last_rotation or key.created),
                "RotationInterval": "",
                "NextRotationDate": "",
                "DeleteDate": _iso(key.delete_date),
                "MaterialExpireTime": "",
                "DeletionProtection": "Disabled",
                "DeletionProtectionDescription": "",
            }
        return {"KeyMetadata": metadata}

    def _generate_data_key(
        self, params: Mapping[str, str], account: str, dry_run: bool
    ) -> dict[str, Any]:
        key_ref = self._required(params, "KeyId")
        context = _canonical_context(params.get("EncryptionContext"))
        size = {"AES_256": 32, "AES_128": 16}.get(params.get("KeySpec") or "AES_256")
        if size is None:
            raise _invalid("KeySpec")
        if params.get("NumberOfBytes"):
            try:
                size = int(params["NumberOfBytes"])
            except ValueError:
                raise _invalid("NumberOfBytes") from None
            if not 1 <= size <= 1024:
                raise _invalid("NumberOfBytes")
        with self._lock:
            key = self._resolve(account, key_ref)
            self._check_crypto(key)
            if dry_run:
                raise _err(ERR_DRY_RUN)
            data_key = secrets.token_bytes(size)
            blob, version_id = self._seal(key, data_key, context)
        return {
            "KeyId": key.key_id,
            "KeyVersionId": version_id,
            "Plaintext": base64.b64encode(data_key).decode(),
            "CiphertextBlob": blob,
        }


def _actions(actions: Iterable[str] | None) -> frozenset[str] | None:
    if actions is None:
        return None
    result = frozenset(actions)
    unknown = result - ACTIONS
    if unknown:
        raise ValueError(f"unknown actions: {sorted(unknown)}")
    return result


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # socketserver's default backlog of 5 drops concurrent SYNs

    def __init__(self, address: tuple[str, int], handler: type, fake: FakeAlibabaKms) -> None:
        self.fake = fake
        self.tls: ssl.SSLContext | None = None
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        current = threading.current_thread()
        with self._conn_lock:
            self._handler_threads.add(current)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._handler_threads.discard(current)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The TLS handshake runs here, in the connection's own thread, not in accept().
        request.settimeout(30.0)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except OSError:  # a client that gave up or does not trust the test CA
            return
        wrapped.settimeout(None)
        with self._conn_lock:
            self._connections.discard(request)
            self._connections.add(wrapped)
        try:
            super().finish_request(wrapped, client_address)
        finally:
            with self._conn_lock:
                self._connections.discard(wrapped)
            with contextlib.suppress(OSError):
                wrapped.close()

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._conn_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "FakeAlibabaKms"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request URLs carry plaintext: never log them

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.send_error(413 if length > 0 else 400)
            return
        body = self.rfile.read(length) if length else b""
        result = self.server.fake._process(self.command, self.path, self.headers, body)
        if isinstance(result, _Drop):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(result.status)
        self.send_header("Content-Type", _ERROR_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(result.body)))
        self.send_header("x-acs-request-id", result.request_id)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(result.body)

    do_POST = _serve  # noqa: N815
    do_GET = _serve  # noqa: N815
    do_PUT = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
    do_PATCH = _serve  # noqa: N815


# --------------------------------------------------------------------------- script mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--access-key-id", default=None)
    parser.add_argument("--access-key-secret", default=None)
    parser.add_argument("--key-id", default=None, help="id of the Aliyun_AES_256 key to create")
    parser.add_argument("--alias", default=None, help="alias/NAME for that key")
    parser.add_argument("--qps", type=float, default=DEFAULT_QPS)
    parser.add_argument(
        "--tls-dir", default=None, help="serve HTTPS with a test CA written here (ca.crt)"
    )
    args = parser.parse_args(argv)

    tls = make_test_ca(Path(args.tls_dir)) if args.tls_dir else None
    fake = FakeAlibabaKms(port=args.port, qps=args.qps, tls=tls)
    credential = fake.add_access_key(args.access_key_id, args.access_key_secret)
    key_id = fake.create_key(key_id=args.key_id)
    if args.alias:
        fake.create_alias(args.alias, key_id)
    fake.start()
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    print(fake.port, flush=True)
    info = {
        "endpoint": fake.endpoint,
        "access_key_id": credential.access_key_id,
        "access_key_secret": credential.access_key_secret,
        "key_id": key_id,
        "alias": args.alias,
        "ca_file": str(tls.ca_cert) if tls else None,
    }
    print(json.dumps(info), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
