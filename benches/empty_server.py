"""The floor any Python KMS plugin pays: grpc.aio with handlers that do nothing.

Same server options and event loop as kmsplug, same socket kind; answers v1 Encrypt/
Decrypt and v2 Status/Encrypt/Decrypt with fixed bytes. Usage: empty_server.py SOCKET_PATH
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc
import uvloop

from kmsplug._proto.v1beta1 import api_pb2 as v1
from kmsplug._proto.v1beta1 import api_pb2_grpc as v1_grpc
from kmsplug._proto.v2 import api_pb2 as v2
from kmsplug._proto.v2 import api_pb2_grpc as v2_grpc
from kmsplug.server import SERVER_OPTIONS

FIXED = bytes(160)


class EmptyV1(v1_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    async def Version(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v1.VersionResponse(version="v1beta1", runtime_name="empty")

    async def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v1.EncryptResponse(cipher=FIXED)

    async def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v1.DecryptResponse(plain=bytes(32))


class EmptyV2(v2_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    async def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v2.StatusResponse(version="v2", healthz="ok", key_id="empty")

    async def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v2.EncryptResponse(ciphertext=FIXED, key_id="empty")

    async def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v2.DecryptResponse(plaintext=bytes(32))


async def main(path: str) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    v1_grpc.add_KeyManagementServiceServicer_to_server(EmptyV1(), server)
    v2_grpc.add_KeyManagementServiceServicer_to_server(EmptyV2(), server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    print("serving on", path, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
