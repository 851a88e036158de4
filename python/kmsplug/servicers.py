"""gRPC servicers for KMS v1beta1 and v2: protobuf in, KeyService call, protobuf out.

They translate and enforce the wire contract's limits, nothing else. Errors become
status codes with fixed, generic messages: no detail that helps an attacker, no secret.

Requests arrive as raw bytes and are decoded here, inside the handler, so that bytes
that are not a valid message (garbage, a truncated length, invalid UTF-8 in a string
field) get INVALID_ARGUMENT like any other refusal, are counted in the metrics, and log
no error; grpc's own deserializer would answer UNKNOWN with its internal type names.

Contract checks beyond the limits (docs/security.md, "What a request must look like"):
- v1: `version` must be "v1beta1" (what kube-apiserver sends) or empty (what other
  KMS clients, such as aws-encryption-provider's and Azure's health checks, send).
- v2 Decrypt: `key_id` is required. kube-apiserver always sends the key_id that Encrypt
  returned (never empty: it refuses an empty one from Encrypt), and the reference
  plugin refuses a Decrypt whose key_id is not its own.
- Encrypt: the plaintext must not be empty (kube-apiserver sends a 32-byte DEK or seed).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from kmsplug import __version__
from kmsplug._proto.v1beta1 import api_pb2 as v1
from kmsplug._proto.v2 import api_pb2 as v2
from kmsplug.core import V1_MAX_CIPHERTEXT, V2_MAX_CIPHERTEXT
from kmsplug.errors import (
    ConfigError,
    InvalidCiphertext,
    InvalidInput,
    InvalidRequest,
    KekNotCached,
    KeyFileError,
    KeyRevoked,
    KmsplugError,
    NeedsRotation,
    PlaintextTooLarge,
    ProviderRefused,
    ProviderUnavailable,
    SealBudgetSpent,
    ShuttingDown,
    UnknownKeyId,
)
from kmsplug.log import clip
from kmsplug.metrics import Metrics
from kmsplug.service import KeyService

log = logging.getLogger(__name__)

V1_VERSION = "v1beta1"
V1_ACCEPTED_VERSIONS = (V1_VERSION, "")
V2_STATUS_VERSIONS = ("v2", "v2beta1")
RUNTIME_NAME = "kmsplug"

_INTERNAL = (grpc.StatusCode.INTERNAL, "internal error")

# Every kmsplug error, the core's included (kmsplug-py maps each core error to one of
# these classes), has its status here: the one place a failure becomes a status code.
# InvalidRequest carries its own message: a fixed phrase the servicers chose.
_ERROR_STATUS: tuple[tuple[type[KmsplugError], grpc.StatusCode, str | None], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, None),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, "invalid argument"),
    (InvalidCiphertext, grpc.StatusCode.INVALID_ARGUMENT, "invalid ciphertext"),
    (PlaintextTooLarge, grpc.StatusCode.INVALID_ARGUMENT, "plaintext too large"),
    (UnknownKeyId, grpc.StatusCode.FAILED_PRECONDITION, "unknown key_id"),
    (
        KeyRevoked,
        grpc.StatusCode.FAILED_PRECONDITION,
        "the KMS key is disabled or pending deletion: nothing new is sealed under it",
    ),
    (ProviderUnavailable, grpc.StatusCode.UNAVAILABLE, "KMS provider unavailable"),
    (
        SealBudgetSpent,  # no retry helps: an operator must act (docs/security.md)
        grpc.StatusCode.FAILED_PRECONDITION,
        "the local root key's seal budget is spent: sealing refused, opening goes on",
    ),
    (NeedsRotation, grpc.StatusCode.UNAVAILABLE, "no usable key-encryption key"),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE, "shutting down"),
    (ProviderRefused, grpc.StatusCode.FAILED_PRECONDITION, "KMS provider refused"),
    # Never expected on a call: the sealer handles KekNotCached, the rest are start-up.
    (KekNotCached, *_INTERNAL),
    (KeyFileError, *_INTERNAL),
    (ConfigError, *_INTERNAL),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and fixed message a caller sees for an exception."""
    for kind, code, message in _ERROR_STATUS:
        if isinstance(exc, kind):
            return code, str(exc) if message is None else message
    return _INTERNAL


class InflightCounter:
    """Calls being handled now, calls started so far, and whether new calls are refused.

    Once `draining` is set (SIGTERM), a call that arrives is answered UNAVAILABLE at once:
    the caller retries, and reaches the replacement plugin on the same socket path.
    """

    __slots__ = ("draining", "started", "value")

    def __init__(self) -> None:
        self.value = 0
        self.started = 0
        self.draining = False


Handler = Callable[[Any, Any, grpc.aio.ServicerContext[bytes, Any]], Awaitable[Any]]
RawHandler = Callable[[Any, bytes, grpc.aio.ServicerContext[bytes, Any]], Awaitable[Any]]

MALFORMED = "malformed request"


def _rpc(request_type: Any, response_type: Any) -> Callable[[Handler], RawHandler]:
    """Decode the request, count the call in flight, time it, and turn exceptions into
    status codes. The decorated method gets the decoded message."""
    parse = request_type.FromString

    def decorate(method: Handler) -> RawHandler:
        name = method.__name__

        @functools.wraps(method)
        async def handler(
            self: Any, raw: bytes, context: grpc.aio.ServicerContext[bytes, Any]
        ) -> Any:
            inflight: InflightCounter = self.inflight
            inflight.value += 1
            inflight.started += 1
            started = time.perf_counter()
            outcome = "OK"
            request: Any = None
            try:
                if inflight.draining:
                    raise ShuttingDown("shutting down")
                try:
                    request = parse(raw)
                except DecodeError:
                    raise InvalidRequest(MALFORMED) from None
                return await method(self, request, context)
            except Exception as exc:
                code, message = status_for(exc)
                outcome = code.name
                # v2 callers send a uid per request; both are the caller's: clipped
                uid = clip(getattr(request, "uid", ""))
                if code == grpc.StatusCode.INTERNAL:
                    log.error("unexpected error in %s", name, exc_info=exc, extra={"uid": uid})
                else:
                    log.debug(
                        "%s refused",
                        name,
                        extra={
                            "api": self.api,
                            "code": outcome,
                            "uid": uid,
                            "key_id": clip(getattr(request, "key_id", "")),
                            "error": type(exc).__name__,
                        },
                    )
                await context.abort(code, message)
                raise AssertionError("unreachable: abort raises") from exc
            finally:
                inflight.value -= 1
                if self.metrics is not None:
                    self.metrics.observe(self.api, name, outcome, time.perf_counter() - started)

        handler.response_serializer = response_type.SerializeToString  # type: ignore[attr-defined]
        return handler

    return decorate


def _check_v1_version(request: Any) -> None:
    if request.version not in V1_ACCEPTED_VERSIONS:
        raise InvalidRequest("unsupported version")


def _check_plaintext(plaintext: bytes) -> None:
    if not plaintext:
        raise InvalidRequest("empty plaintext")


class V1beta1Servicer:
    """KMS v1beta1 (deprecated in Kubernetes 1.28, still used with KMSv1=true)."""

    api = "v1beta1"
    service_name = "v1beta1.KeyManagementService"
    methods = ("Version", "Encrypt", "Decrypt")

    def __init__(
        self, service: KeyService, inflight: InflightCounter, metrics: Metrics | None = None
    ) -> None:
        self.service = service
        self.inflight = inflight
        self.metrics = metrics

    @_rpc(v1.VersionRequest, v1.VersionResponse)
    async def Version(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        _check_v1_version(request)
        return v1.VersionResponse(
            version=V1_VERSION, runtime_name=RUNTIME_NAME, runtime_version=__version__
        )

    @_rpc(v1.EncryptRequest, v1.EncryptResponse)
    async def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        _check_v1_version(request)
        _check_plaintext(request.plain)
        result = await self.service.encrypt(request.plain)
        if len(result.ciphertext) > V1_MAX_CIPHERTEXT:
            raise PlaintextTooLarge("ciphertext would exceed the v1 limit")
        return v1.EncryptResponse(cipher=result.ciphertext)

    @_rpc(v1.DecryptRequest, v1.DecryptResponse)
    async def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        _check_v1_version(request)
        return v1.DecryptResponse(plain=await self.service.decrypt(request.cipher))


class V2Servicer:
    """KMS v2 (GA since Kubernetes 1.29)."""

    api = "v2"
    service_name = "v2.KeyManagementService"
    methods = ("Status", "Encrypt", "Decrypt")

    def __init__(
        self,
        service: KeyService,
        inflight: InflightCounter,
        status_version: str = "v2",
        metrics: Metrics | None = None,
    ) -> None:
        if status_version not in V2_STATUS_VERSIONS:
            raise ValueError(f"v2 status version must be one of {V2_STATUS_VERSIONS}")
        self.service = service
        self.inflight = inflight
        self.status_version = status_version
        self.metrics = metrics

    @_rpc(v2.StatusRequest, v2.StatusResponse)
    async def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
        status = self.service.apiserver_status()
        return v2.StatusResponse(
            version=self.status_version, healthz=status.healthz, key_id=status.key_id
        )

    @_rpc(v2.EncryptRequest, v2.EncryptResponse)
    async def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        _check_plaintext(request.plaintext)
        result = await self.service.encrypt(request.plaintext)
        if len(result.ciphertext) > V2_MAX_CIPHERTEXT:
            raise PlaintextTooLarge("ciphertext would exceed the v2 limit")
        return v2.EncryptResponse(
            ciphertext=result.ciphertext, key_id=result.key_id, annotations=result.annotations
        )

    @_rpc(v2.DecryptRequest, v2.DecryptResponse)
    async def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        if not request.key_id:
            raise InvalidRequest("key_id required")
        plaintext = await self.service.decrypt(
            request.ciphertext, request.key_id, request.annotations
        )
        return v2.DecryptResponse(plaintext=plaintext)


def _add(server: grpc.aio.Server, servicer: V1beta1Servicer | V2Servicer) -> None:
    """Register a servicer's methods with raw-bytes requests (they decode themselves)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for name in servicer.methods:
        method = getattr(servicer, name)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=None, response_serializer=method.response_serializer
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(servicer.service_name, handlers),)
    )
    server.add_registered_method_handlers(servicer.service_name, handlers)


def register(
    server: grpc.aio.Server,
    service: KeyService,
    inflight: InflightCounter,
    *,
    v2_status_version: str = "v2",
    enable_v1: bool = True,
    metrics: Metrics | None = None,
) -> None:
    """Serve both API versions on one server: gRPC routes by full method name."""
    _add(server, V2Servicer(service, inflight, v2_status_version, metrics))
    if enable_v1:
        _add(server, V1beta1Servicer(service, inflight, metrics))
