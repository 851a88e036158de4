"""gRPC access to the plugin under test: every call's outcome is kept, never raised.

Requests go out as raw bytes (the caller serialises), so well-formed and deliberately
malformed requests take the same path. Each connection is its own HTTP/2 connection (a
local subchannel pool: gRPC would otherwise share one between channels with equal
arguments), as the apiserver keeps one per provider.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from kmsplug.endpoint import Endpoint

M = TypeVar("M", bound=Message)

V2_STATUS = "/v2.KeyManagementService/Status"
V2_ENCRYPT = "/v2.KeyManagementService/Encrypt"
V2_DECRYPT = "/v2.KeyManagementService/Decrypt"
V1_VERSION = "/v1beta1.KeyManagementService/Version"
V1_ENCRYPT = "/v1beta1.KeyManagementService/Encrypt"
V1_DECRYPT = "/v1beta1.KeyManagementService/Decrypt"

#: Codes that mean the plugin did not answer: it hung past the deadline, or the connection
#: went away under the call.
NO_ANSWER = frozenset({"DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED"})
UNDECODABLE_RESPONSE = "UNDECODABLE_RESPONSE"


@dataclass(frozen=True, slots=True)
class Reply:
    """One call's outcome: the response bytes on OK, else the status code's name."""

    code: str
    details: str
    seconds: float
    payload: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def parse(self, factory: Callable[[bytes], M]) -> tuple[M | None, Reply]:
        """The response message, or None with a Reply saying why it could not be read."""
        if not self.ok:
            return None, self
        try:
            return factory(self.payload), self
        except DecodeError:
            return None, Reply(UNDECODABLE_RESPONSE, "response is not valid protobuf", self.seconds)

    def describe(self) -> str:
        return self.code if not self.details else f"{self.code} ({self.details[:120]})"


def _identity(data: bytes) -> bytes:
    return data


class Connection:
    """One HTTP/2 connection to the plugin's socket."""

    def __init__(self, endpoint: Endpoint, *, authority: str = "localhost") -> None:
        options = [
            ("grpc.default_authority", authority),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
        ]
        self.channel = grpc.aio.insecure_channel(endpoint.grpc_target, options=options)

    async def call(
        self,
        method: str,
        request: bytes,
        timeout: float,  # noqa: ASYNC109 (gRPC's own deadline, sent to the plugin)
        *,
        wait_for_ready: bool = False,
    ) -> Reply:
        stub = self.channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        started = time.perf_counter()
        try:
            payload = await stub(request, timeout=timeout, wait_for_ready=wait_for_ready)
        except grpc.aio.AioRpcError as exc:
            elapsed = time.perf_counter() - started
            return Reply(exc.code().name, exc.details() or "", elapsed)
        return Reply("OK", "", time.perf_counter() - started, bytes(payload))

    def is_ready(self) -> bool:
        """Is the connection still up (not dropped by the server)?"""
        return self.channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        await self.channel.close()
