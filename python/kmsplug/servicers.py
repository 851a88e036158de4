"""gRPC servicers for KMS v1beta1 and v2: protobuf in, KeyService call, protobuf out.

They translate and enforce the wire contract's limits, nothing else. Errors become
status codes with fixed, generic messages: no detail that helps an attacker, no secret.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from kmsplug import __version__
from kmsplug._proto.v1beta1 import api_pb2 as v1
from kmsplug._proto.v1beta1 import api_pb2_grpc as v1_grpc
from kmsplug._proto.v2 import api_pb2 as v2
from kmsplug._proto.v2 import api_pb2_grpc as v2_grpc
from kmsplug.core import V1_MAX_CIPHERTEXT, V2_MAX_CIPHERTEXT
from kmsplug.errors import (
    InvalidCiphertext,
    KmsplugError,
    NeedsRotation,
    PlaintextTooLarge,
    ProviderUnavailable,
    UnknownKeyId,
)
from kmsplug.metrics import Metrics
from kmsplug.service import KeyService

log = logging.getLogger(__name__)

V1_VERSION = "v1beta1"
V2_STATUS_VERSIONS = ("v2", "v2beta1")
RUNTIME_NAME = "kmsplug"

_ERROR_STATUS: tuple[tuple[type[KmsplugError], grpc.StatusCode, str], ...] = (
    (InvalidCiphertext, grpc.StatusCode.INVALID_ARGUMENT, "invalid ciphertext"),
    (PlaintextTooLarge, grpc.StatusCode.INVALID_ARGUMENT, "plaintext too large"),
    (UnknownKeyId, grpc.StatusCode.FAILED_PRECONDITION, "unknown key_id"),
    (ProviderUnavailable, grpc.StatusCode.UNAVAILABLE, "KMS provider unavailable"),
    (NeedsRotation, grpc.StatusCode.UNAVAILABLE, "no usable key-encryption key"),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and fixed message a caller sees for an exception."""
    for kind, code, message in _ERROR_STATUS:
        if isinstance(exc, kind):
            return code, message
    return grpc.StatusCode.INTERNAL, "internal error"


class InflightCounter:
    """Calls being handled now, and calls started so far.

    A local call runs start to finish without yielding, so `value` is mostly 0 even under
    load; `started` moving is what tells the shutdown that calls are still arriving.
    """

    __slots__ = ("started", "value")

    def __init__(self) -> None:
        self.value = 0
        self.started = 0


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


def _rpc(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Count the call in flight, time it, and turn exceptions into status codes."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        inflight: InflightCounter = self.inflight
        inflight.value += 1
        inflight.started += 1
        started = time.perf_counter()
        outcome = "OK"
        try:
            return await method(self, request, context)
        except Exception as exc:
            code, message = status_for(exc)
            outcome = code.name
            uid = getattr(request, "uid", "")  # v2 callers send one per request
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
                        "error": type(exc).__name__,
                    },
                )
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            inflight.value -= 1
            if self.metrics is not None:
                self.metrics.observe(self.api, name, outcome, time.perf_counter() - started)

    return handler


class V1beta1Servicer(v1_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    """KMS v1beta1 (deprecated in Kubernetes 1.28, still used with KMSv1=true)."""

    api = "v1beta1"

    def __init__(
        self, service: KeyService, inflight: InflightCounter, metrics: Metrics | None = None
    ) -> None:
        self.service = service
        self.inflight = inflight
        self.metrics = metrics

    @_rpc
    async def Version(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        return v1.VersionResponse(
            version=V1_VERSION, runtime_name=RUNTIME_NAME, runtime_version=__version__
        )

    @_rpc
    async def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        result = await self.service.encrypt(request.plain)
        if len(result.ciphertext) > V1_MAX_CIPHERTEXT:
            raise PlaintextTooLarge("ciphertext would exceed the v1 limit")
        return v1.EncryptResponse(cipher=result.ciphertext)

    @_rpc
    async def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v1.DecryptResponse(plain=await self.service.decrypt(request.cipher))


class V2Servicer(v2_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    """KMS v2 (GA since Kubernetes 1.29)."""

    api = "v2"

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

    @_rpc
    async def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
        status = self.service.status()
        return v2.StatusResponse(
            version=self.status_version, healthz=status.healthz, key_id=status.key_id
        )

    @_rpc
    async def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        result = await self.service.encrypt(request.plaintext)
        if len(result.ciphertext) > V2_MAX_CIPHERTEXT:
            raise PlaintextTooLarge("ciphertext would exceed the v2 limit")
        return v2.EncryptResponse(
            ciphertext=result.ciphertext, key_id=result.key_id, annotations=result.annotations
        )

    @_rpc
    async def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        plaintext = await self.service.decrypt(
            request.ciphertext, request.key_id or None, request.annotations
        )
        return v2.DecryptResponse(plaintext=plaintext)


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
    v2_grpc.add_KeyManagementServiceServicer_to_server(
        V2Servicer(service, inflight, v2_status_version, metrics), server
    )
    if enable_v1:
        v1_grpc.add_KeyManagementServiceServicer_to_server(
            V1beta1Servicer(service, inflight, metrics), server
        )
