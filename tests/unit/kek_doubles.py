"""A stand-in remote KMS for the unit tests of the sealer and the service: real
AES-256-GCM, counted calls, optional latency, an outage and a revoked (disabled) key."""

from __future__ import annotations

import os

import anyio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsplug.errors import KeyRevoked, ProviderUnavailable
from kmsplug.providers.base import KekProvider


class CountingKek(KekProvider):
    kind = "test"

    def __init__(self, key_id: str = "test-key-1", latency: float = 0.0) -> None:
        self._key_id = key_id
        self._aead = AESGCM(os.urandom(32))
        self.latency = latency
        self.down = False
        self.disabled = False
        self.calls = {"wrap": 0, "unwrap": 0, "health": 0}

    @property
    def key_id(self) -> str:
        return self._key_id

    def rotate_remote(self, key_id: str) -> None:
        self._key_id = key_id

    async def _remote(self, op: str) -> None:
        self.calls[op] += 1
        if self.latency:
            await anyio.sleep(self.latency)
        if self.down:
            raise ProviderUnavailable("KMS did not answer in time")
        if self.disabled:
            raise KeyRevoked("key is disabled or pending deletion: re-enable it")

    async def wrap(self, plaintext: bytes) -> bytes:
        await self._remote("wrap")
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, b"wrap")

    async def unwrap(self, wrapped: bytes) -> bytes:
        await self._remote("unwrap")
        return self._aead.decrypt(wrapped[:12], wrapped[12:], b"wrap")

    async def health(self) -> None:
        await self._remote("health")
