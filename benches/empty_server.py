"""The floor any Python KMS plugin pays: grpc.aio with handlers that do (almost) nothing.

Same server options and event loop as kmsplug, same socket kind. Two kinds:
- empty (default): v1 Encrypt/Decrypt and v2 Status/Encrypt/Decrypt answer fixed bytes
  (grpc decodes the request and encodes the answer; nothing else happens);
- `--floor KEY_FILE`: what any plugin must do on top of that: each Encrypt and Decrypt is
  one call into kmsplug's Rust core (seal or open a DEK under a local KEK), and Status
  reports that KEK's key_id. No checks, metrics, counters or layers: the cost kmsplug
  adds is the difference between this server and kmsplug.

Calls are routed as kmsplug routes them: generic handlers only (servicers.GenericOnly),
so the comparison holds no routing difference. `--registered` adds the per-method
handlers that generated code registers, as a naive plugin would (grpc.aio then waits on
one pending request per method for every call: see GenericOnly).

Usage: empty_server.py [--floor KEY_FILE] [--registered] SOCKET_PATH
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import uvloop

from kmsplug._proto.v1beta1 import api_pb2 as v1
from kmsplug._proto.v1beta1 import api_pb2_grpc as v1_grpc
from kmsplug._proto.v2 import api_pb2 as v2
from kmsplug._proto.v2 import api_pb2_grpc as v2_grpc
from kmsplug.core import Keyring, RootKey
from kmsplug.server import SERVER_OPTIONS
from kmsplug.servicers import GenericOnly

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


class FloorV1(EmptyV1):
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v1.EncryptResponse(cipher=self.keyring.seal(request.plain))

    async def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v1.DecryptResponse(plain=self.keyring.open(request.cipher))


class FloorV2(EmptyV2):
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v2.StatusResponse(version="v2", healthz="ok", key_id=self.keyring.current_key_id)

    async def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        ciphertext = self.keyring.seal(request.plaintext)
        return v2.EncryptResponse(ciphertext=ciphertext, key_id=self.keyring.current_key_id)

    async def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        return v2.DecryptResponse(plaintext=self.keyring.open(request.ciphertext, request.key_id))


def floor_keyring(key_file: Path) -> Keyring:
    root = RootKey.from_file(key_file) if key_file.exists() else RootKey.create_file(key_file)
    keyring = Keyring()
    keyring.rotate_local(root)
    return keyring


async def main(path: str, key_file: Path | None, registered: bool) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    target: Any = server if registered else GenericOnly(server)
    if key_file is None:
        v1_servicer, v2_servicer = EmptyV1(), EmptyV2()
    else:
        keyring = floor_keyring(key_file)
        v1_servicer, v2_servicer = FloorV1(keyring), FloorV2(keyring)
    v1_grpc.add_KeyManagementServiceServicer_to_server(v1_servicer, target)
    v2_grpc.add_KeyManagementServiceServicer_to_server(v2_servicer, target)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floor", type=Path, metavar="KEY_FILE")
    parser.add_argument("--registered", action="store_true")
    parser.add_argument("socket")
    args = parser.parse_args()
    uvloop.run(main(args.socket, args.floor, args.registered))
