"""A small KMS client speaking both API versions over one channel.

Used by `kmsplug health`, the tests and the benchmarks; it works against any KMS plugin
socket, not only kmsplug's. Calls carry `:authority localhost`, as recent apiservers do.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import grpc

from kmsplug._proto.v1beta1 import api_pb2 as v1
from kmsplug._proto.v1beta1 import api_pb2_grpc as v1_grpc
from kmsplug._proto.v2 import api_pb2 as v2
from kmsplug._proto.v2 import api_pb2_grpc as v2_grpc
from kmsplug.endpoint import Endpoint

CHANNEL_OPTIONS = (("grpc.default_authority", "localhost"),)


@dataclass(frozen=True, slots=True)
class V2Encrypted:
    ciphertext: bytes
    key_id: str
    annotations: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class V2Status:
    version: str
    healthz: str
    key_id: str


class KmsClient:
    """Async client; use `async with KmsClient(endpoint) as client:`."""

    def __init__(self, endpoint: Endpoint | str, *, timeout: float = 3.0) -> None:
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(self.endpoint.grpc_target, options=CHANNEL_OPTIONS)
        self._v1 = v1_grpc.KeyManagementServiceStub(self.channel)
        self._v2 = v2_grpc.KeyManagementServiceStub(self.channel)

    async def __aenter__(self) -> KmsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def v1_version(self) -> str:
        response = await self._v1.Version(
            v1.VersionRequest(version="v1beta1"), timeout=self.timeout, wait_for_ready=True
        )
        return str(response.version)

    async def v1_encrypt(self, plain: bytes) -> bytes:
        response = await self._v1.Encrypt(
            v1.EncryptRequest(version="v1beta1", plain=plain), timeout=self.timeout
        )
        return bytes(response.cipher)

    async def v1_decrypt(self, cipher: bytes) -> bytes:
        response = await self._v1.Decrypt(
            v1.DecryptRequest(version="v1beta1", cipher=cipher), timeout=self.timeout
        )
        return bytes(response.plain)

    async def v2_status(self, *, wait_for_ready: bool = False) -> V2Status:
        response = await self._v2.Status(
            v2.StatusRequest(), timeout=self.timeout, wait_for_ready=wait_for_ready
        )
        return V2Status(response.version, response.healthz, response.key_id)

    async def v2_encrypt(self, plaintext: bytes) -> V2Encrypted:
        response = await self._v2.Encrypt(
            v2.EncryptRequest(plaintext=plaintext, uid=str(uuid.uuid4())), timeout=self.timeout
        )
        return V2Encrypted(bytes(response.ciphertext), response.key_id, dict(response.annotations))

    async def v2_decrypt(
        self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes] | None = None
    ) -> bytes:
        response = await self._v2.Decrypt(
            v2.DecryptRequest(
                ciphertext=ciphertext,
                uid=str(uuid.uuid4()),
                key_id=key_id,
                annotations=dict(annotations or {}),
            ),
            timeout=self.timeout,
        )
        return bytes(response.plaintext)


async def check_health(endpoint: Endpoint, deadline: float = 5.0) -> tuple[bool, str]:
    """Ask a plugin whether it is healthy: v2 Status, or v1 Version for a v1-only plugin."""
    async with KmsClient(endpoint, timeout=deadline) as client:
        try:
            status = await client.v2_status(wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                return False, f"Status failed: {exc.code().name}"
        else:
            if status.healthz != "ok":
                return False, f"unhealthy: {status.healthz}"
            if not status.key_id:
                return False, "unhealthy: empty key_id"
            return True, f"ok (version {status.version}, key_id {status.key_id})"
        try:
            version = await client.v1_version()
        except grpc.aio.AioRpcError as exc:
            return False, f"Version failed: {exc.code().name}"
        if version != "v1beta1":
            return False, f"unexpected v1 version {version!r}"
        return True, "ok (v1beta1)"
