"""The two KMS APIs behind one shape, so the shared checks are written once.

Requests are built and responses read with the project's generated protobuf modules (the
wire contract of k8s.io/kms); every request carries what the apiserver sends (v1: version
"v1beta1"; v2: a fresh UUID).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from kmsplug._proto.v1beta1 import api_pb2 as v1pb
from kmsplug._proto.v2 import api_pb2 as v2pb
from kmsplug.conformance import alter, wire
from kmsplug.conformance.session import Session
from kmsplug.conformance.wire import Connection, Reply


@dataclass(frozen=True, slots=True)
class Sealed:
    """What the apiserver stores for one Encrypt: the ciphertext, and for v2 the key_id and
    annotations it hands back on Decrypt."""

    ciphertext: bytes
    key_id: str = ""
    annotations: Mapping[str, bytes] = field(default_factory=dict)

    def but(
        self,
        *,
        ciphertext: bytes | None = None,
        key_id: str | None = None,
        annotations: Mapping[str, bytes] | None = None,
    ) -> Sealed:
        return Sealed(
            self.ciphertext if ciphertext is None else ciphertext,
            self.key_id if key_id is None else key_id,
            self.annotations if annotations is None else annotations,
        )


class Api:
    name: str
    encrypt_method: str
    decrypt_method: str
    liveness_method: str

    def __init__(self, session: Session) -> None:
        self.session = session

    def encrypt_request(self, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def decrypt_request(self, sealed: Sealed) -> bytes:
        raise NotImplementedError

    def read_sealed(self, reply: Reply) -> tuple[Sealed | None, Reply]:
        raise NotImplementedError

    def read_plaintext(self, reply: Reply) -> tuple[bytes | None, Reply]:
        raise NotImplementedError

    def liveness_request(self) -> bytes:
        raise NotImplementedError

    def utf8_requests(self) -> list[tuple[str, str, bytes, bool]]:
        """(name, method, request, may succeed) with invalid UTF-8 in a string field. A
        Decrypt of the garbage ciphertext they carry may never succeed."""
        raise NotImplementedError

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.liveness_method, self.encrypt_method, self.decrypt_method)

    async def encrypt(
        self, plaintext: bytes, *, on: Connection | None = None
    ) -> tuple[Sealed | None, Reply]:
        reply = await self.session.call(self.encrypt_method, self.encrypt_request(plaintext), on=on)
        return self.read_sealed(reply)

    async def decrypt(
        self, sealed: Sealed, *, on: Connection | None = None
    ) -> tuple[bytes | None, Reply]:
        reply = await self.session.call(self.decrypt_method, self.decrypt_request(sealed), on=on)
        return self.read_plaintext(reply)

    async def alive(self, *, on: Connection | None = None, wait: bool = False) -> Reply:
        return await self.session.call(
            self.liveness_method, self.liveness_request(), on=on, wait_for_ready=wait
        )


class V2(Api):
    name = "v2"
    encrypt_method = wire.V2_ENCRYPT
    decrypt_method = wire.V2_DECRYPT
    liveness_method = wire.V2_STATUS

    def encrypt_request(self, plaintext: bytes) -> bytes:
        request = v2pb.EncryptRequest(plaintext=plaintext, uid=str(uuid.uuid4()))
        return bytes(request.SerializeToString())

    def decrypt_request(self, sealed: Sealed) -> bytes:
        request = v2pb.DecryptRequest(
            ciphertext=sealed.ciphertext,
            uid=str(uuid.uuid4()),
            key_id=sealed.key_id,
            annotations=dict(sealed.annotations),
        )
        return bytes(request.SerializeToString())

    def read_sealed(self, reply: Reply) -> tuple[Sealed | None, Reply]:
        message, reply = reply.parse(v2pb.EncryptResponse.FromString)
        if message is None:
            return None, reply
        sealed = Sealed(bytes(message.ciphertext), message.key_id, dict(message.annotations))
        return sealed, reply

    def read_plaintext(self, reply: Reply) -> tuple[bytes | None, Reply]:
        message, reply = reply.parse(v2pb.DecryptResponse.FromString)
        return (None if message is None else bytes(message.plaintext)), reply

    def liveness_request(self) -> bytes:
        return bytes(v2pb.StatusRequest().SerializeToString())

    def read_status(self, reply: Reply) -> tuple[v2pb.StatusResponse | None, Reply]:
        return reply.parse(v2pb.StatusResponse.FromString)

    def utf8_requests(self) -> list[tuple[str, str, bytes, bool]]:
        # DecryptRequest.key_id is field 3, EncryptRequest.uid field 2 (both strings).
        bad = alter.INVALID_UTF8
        return [
            ("Decrypt key_id not UTF-8", self.decrypt_method, b"\x0a\x01x\x1a\x02" + bad, False),
            ("Encrypt uid not UTF-8", self.encrypt_method, b"\x0a\x01x\x12\x02" + bad, True),
        ]


class V1(Api):
    name = "v1"
    encrypt_method = wire.V1_ENCRYPT
    decrypt_method = wire.V1_DECRYPT
    liveness_method = wire.V1_VERSION
    VERSION = "v1beta1"

    def encrypt_request(self, plaintext: bytes) -> bytes:
        request = v1pb.EncryptRequest(version=self.VERSION, plain=plaintext)
        return bytes(request.SerializeToString())

    def decrypt_request(self, sealed: Sealed) -> bytes:
        request = v1pb.DecryptRequest(version=self.VERSION, cipher=sealed.ciphertext)
        return bytes(request.SerializeToString())

    def read_sealed(self, reply: Reply) -> tuple[Sealed | None, Reply]:
        message, reply = reply.parse(v1pb.EncryptResponse.FromString)
        return (None if message is None else Sealed(bytes(message.cipher))), reply

    def read_plaintext(self, reply: Reply) -> tuple[bytes | None, Reply]:
        message, reply = reply.parse(v1pb.DecryptResponse.FromString)
        return (None if message is None else bytes(message.plain)), reply

    def liveness_request(self) -> bytes:
        return bytes(v1pb.VersionRequest(version=self.VERSION).SerializeToString())

    def read_version(self, reply: Reply) -> tuple[v1pb.VersionResponse | None, Reply]:
        return reply.parse(v1pb.VersionResponse.FromString)

    def utf8_requests(self) -> list[tuple[str, str, bytes, bool]]:
        # Every v1 request has `version` (field 1, string).
        bad = b"\x0a\x02" + alter.INVALID_UTF8
        return [
            ("Version version not UTF-8", self.liveness_method, bad, True),
            ("Decrypt version not UTF-8", self.decrypt_method, bad + b"\x12\x01x", False),
        ]
