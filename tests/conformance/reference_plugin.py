"""A small test-only KMS plugin (v2 and v1beta1): correct by default, broken on request.

It shares no code with kmsplug's servers: AES-256-GCM from `cryptography`, a key made at
start-up, the key_id and annotations bound as associated data. Each --fault breaks one
behaviour so a test can show that the matching conformance check fails. Run:

    python reference_plugin.py --socket /tmp/x.sock [--fault NAME ...]

It prints `ready` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsplug._proto.v1beta1 import api_pb2 as v1pb
from kmsplug._proto.v1beta1 import api_pb2_grpc as v1grpc
from kmsplug._proto.v2 import api_pb2 as v2pb
from kmsplug._proto.v2 import api_pb2_grpc as v2grpc

Ctx = grpc.aio.ServicerContext
KEY_ID = "conformance-reference-kek-1"
ANNOTATION = "version.conformance.example.com"
MAX_PLAINTEXT = 4096

FAULTS = {
    "wrong-key-id": "v2 Encrypt reports a key_id other than Status's",
    "big-ciphertext": "v2 ciphertexts padded past 1024 bytes",
    "huge-v1-cipher": "v1 ciphers padded past 65535 bytes",
    "unauthenticated": "AES-CTR without a tag: tampered input decrypts to garbage",
    "non-fqdn-annotation": "annotation key with a '/' (the docs' own example)",
    "huge-annotations": "a 33 KiB annotation",
    "v2beta1": "Status reports the pre-GA version name",
    "bad-version": "Status reports version v3",
    "unhealthy": "Status healthz is not 'ok'",
    "flip-flop": "Status key_id alternates between two values",
    "long-key-id": "a 1025-byte key_id",
    "ignore-key-id": "Decrypt ignores the key_id",
    "deterministic": "the same plaintext always gives the same ciphertext",
    "hang-on-empty": "Encrypt of an empty plaintext never answers",
    "crash-on-short": "Decrypt of a ciphertext under 12 bytes kills the process",
    "serial": "one call at a time, 20 ms each",
    "sticky-errors": "a refused Decrypt turns Status unhealthy (as a shared health cache)",
    "v1-wrong-version": "v1 Version answers 'v2'",
    "v1-no-ping": "v1 Encrypt refuses plaintexts shorter than 32 bytes",
}


class Sealer:
    """AES-256-GCM (or, with the `unauthenticated` fault, unauthenticated AES-CTR)."""

    def __init__(self, faults: set[str]) -> None:
        self.key = AESGCM.generate_key(bit_length=256)
        self.faults = faults

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        if "unauthenticated" in self.faults:
            nonce = os.urandom(16)
            encryptor = Cipher(algorithms.AES(self.key), modes.CTR(nonce)).encryptor()
            return nonce + encryptor.update(plaintext) + encryptor.finalize()
        if "deterministic" in self.faults:
            nonce = AESGCM(self.key).encrypt(b"\0" * 12, plaintext, b"nonce")[:12]
        else:
            nonce = os.urandom(12)
        return nonce + AESGCM(self.key).encrypt(nonce, plaintext, aad)

    def open(self, ciphertext: bytes, aad: bytes) -> bytes:
        if "unauthenticated" in self.faults:
            if len(ciphertext) < 16:
                raise ValueError("short")
            decryptor = Cipher(algorithms.AES(self.key), modes.CTR(ciphertext[:16])).decryptor()
            return decryptor.update(ciphertext[16:]) + decryptor.finalize()
        if len(ciphertext) < 12 + 16:
            raise ValueError("short")
        return AESGCM(self.key).decrypt(ciphertext[:12], ciphertext[12:], aad)


def pad(ciphertext: bytes, to: int) -> bytes:
    """Length-prefixed and zero-padded to `to` bytes (unpad() reverses it)."""
    body = len(ciphertext).to_bytes(4, "big") + ciphertext
    return body + b"\0" * max(0, to - len(body))


def unpad(data: bytes) -> bytes:
    size = int.from_bytes(data[:4], "big")
    if len(data) < 4 + size:
        raise ValueError("short")
    return data[4 : 4 + size]


class Plugin:
    def __init__(self, faults: set[str]) -> None:
        self.faults = faults
        self.sealer = Sealer(faults)
        self.key_id = "k" * 1025 if "long-key-id" in faults else KEY_ID
        self.status_calls = 0
        self.last_error = ""
        self.lock = asyncio.Lock()

    def current_key_id(self) -> str:
        if "flip-flop" in self.faults:
            return self.key_id + ("-b" if self.status_calls % 2 else "-a")
        return self.key_id

    def known_key_ids(self) -> set[str]:
        if "flip-flop" in self.faults:
            return {self.key_id + "-a", self.key_id + "-b"}
        if "wrong-key-id" in self.faults:
            return {"not-the-status-key-id"}
        return {self.key_id}

    def annotations(self) -> dict[str, bytes]:
        if "non-fqdn-annotation" in self.faults:
            return {"kms.conformance.example.com/version": b"1"}
        if "huge-annotations" in self.faults:
            return {ANNOTATION: b"1", "padding.conformance.example.com": b"p" * (33 * 1024)}
        return {ANNOTATION: b"1"}

    @staticmethod
    def aad(key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        parts = [key_id.encode()] + [k.encode() + b"=" + v for k, v in sorted(annotations.items())]
        return b"\n".join(parts)

    async def pace(self) -> None:
        if "serial" in self.faults:
            async with self.lock:
                await asyncio.sleep(0.02)


class V2Servicer(v2grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def Status(self, request: object, context: Ctx) -> object:  # noqa: N802
        p = self.plugin
        await p.pace()
        p.status_calls += 1
        version = "v2"
        if "v2beta1" in p.faults:
            version = "v2beta1"
        if "bad-version" in p.faults:
            version = "v3"
        healthz = "degraded: test fault" if "unhealthy" in p.faults else "ok"
        if p.last_error and "sticky-errors" in p.faults:
            healthz = f"err: {p.last_error}"
        return v2pb.StatusResponse(version=version, healthz=healthz, key_id=p.current_key_id())

    async def Encrypt(self, request: v2pb.EncryptRequest, context: Ctx) -> object:  # noqa: N802
        p = self.plugin
        await p.pace()
        plaintext = bytes(request.plaintext)
        if not plaintext:
            if "hang-on-empty" in p.faults:
                await asyncio.sleep(3600)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty plaintext")
        if len(plaintext) > MAX_PLAINTEXT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "plaintext too large")
        key_id = "not-the-status-key-id" if "wrong-key-id" in p.faults else p.current_key_id()
        annotations = p.annotations()
        ciphertext = p.sealer.seal(plaintext, p.aad(key_id, annotations))
        if "big-ciphertext" in p.faults:
            ciphertext = pad(ciphertext, 1100)
        return v2pb.EncryptResponse(ciphertext=ciphertext, key_id=key_id, annotations=annotations)

    async def Decrypt(self, request: v2pb.DecryptRequest, context: Ctx) -> object:  # noqa: N802
        p = self.plugin
        await p.pace()
        ciphertext = bytes(request.ciphertext)
        if len(ciphertext) < 12 and "crash-on-short" in p.faults:
            os._exit(3)
        key_id = request.key_id
        if "ignore-key-id" in p.faults:
            key_id = p.current_key_id()
        elif key_id not in p.known_key_ids():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "unknown key_id")
        try:
            if "big-ciphertext" in p.faults:
                ciphertext = unpad(ciphertext)
            plaintext = p.sealer.open(ciphertext, p.aad(key_id, dict(request.annotations)))
        except (InvalidTag, ValueError):
            p.last_error = "cannot decrypt"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot decrypt")
        return v2pb.DecryptResponse(plaintext=plaintext)


class V1Servicer(v1grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    async def Version(self, request: object, context: Ctx) -> object:  # noqa: N802
        version = "v2" if "v1-wrong-version" in self.plugin.faults else "v1beta1"
        return v1pb.VersionResponse(version=version, runtime_name="reference", runtime_version="0")

    async def Encrypt(self, request: v1pb.EncryptRequest, context: Ctx) -> object:  # noqa: N802
        p = self.plugin
        await p.pace()
        plain = bytes(request.plain)
        if not plain:
            if "hang-on-empty" in p.faults:
                await asyncio.sleep(3600)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty plaintext")
        if len(plain) > MAX_PLAINTEXT or ("v1-no-ping" in p.faults and len(plain) < 32):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad plaintext size")
        cipher = p.sealer.seal(plain, b"v1")
        if "huge-v1-cipher" in p.faults:
            cipher = pad(cipher, 70000)
        return v1pb.EncryptResponse(cipher=cipher)

    async def Decrypt(self, request: v1pb.DecryptRequest, context: Ctx) -> object:  # noqa: N802
        p = self.plugin
        await p.pace()
        cipher = bytes(request.cipher)
        if len(cipher) < 12 and "crash-on-short" in p.faults:
            os._exit(3)
        try:
            if "huge-v1-cipher" in p.faults:
                cipher = unpad(cipher)
            plain = p.sealer.open(cipher, b"v1")
        except (InvalidTag, ValueError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot decrypt")
        return v1pb.DecryptResponse(plain=plain)


async def serve(socket_path: Path, faults: set[str]) -> None:
    plugin = Plugin(faults)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 << 20)])
    v2grpc.add_KeyManagementServiceServicer_to_server(V2Servicer(plugin), server)
    v1grpc.add_KeyManagementServiceServicer_to_server(V1Servicer(plugin), server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--fault", action="append", default=[], choices=sorted(FAULTS))
    args = parser.parse_args()
    asyncio.run(serve(args.socket, set(args.fault)))


if __name__ == "__main__":
    sys.exit(main())
