"""A revoked write key is not an outage (kmsplug.service).

When the KMS says the key is disabled or pending deletion (KeyRevoked), kmsplug seals
nothing new under it and its Status fails, while what it holds KEKs for still opens. An
unreachable KMS (ProviderUnavailable) only makes it unhealthy: both go on. Measured end to
end on three apiservers in tests/e2e/test_ha_revocation.py.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsplug.errors import KeyRevoked, ProviderUnavailable
from kmsplug.providers.base import KekProvider
from kmsplug.sealer import Sealer
from kmsplug.service import KeyService

pytestmark = pytest.mark.anyio


class RevocableKek(KekProvider):
    """A stand-in remote KMS (real AES-GCM, counted calls) whose key an operator can
    disable, or that can stop answering."""

    kind = "test"

    def __init__(self) -> None:
        self._aead = AESGCM(os.urandom(32))
        self.disabled = False
        self.down = False
        self.calls = {"wrap": 0, "unwrap": 0, "health": 0}

    @property
    def key_id(self) -> str:
        return "test-key-1"

    async def _remote(self, op: str) -> None:
        self.calls[op] += 1
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


async def started() -> tuple[RevocableKek, KeyService]:
    kek = RevocableKek()
    service = KeyService(Sealer(kek))
    await service.start()
    return kek, service


async def test_a_disabled_key_stops_sealing_and_keeps_opening() -> None:
    kek, service = await started()
    dek = os.urandom(32)
    sealed = await service.encrypt(dek)
    kek.disabled = True
    await service.probe()  # the next health probe hears it from the KMS
    with pytest.raises(KeyRevoked, match="disabled or pending deletion"):
        await service.encrypt(os.urandom(32))
    with pytest.raises(KeyRevoked):
        service.apiserver_status()  # the apiserver stops its own v2 writes on this
    status = service.status()  # metrics and /healthz still read a verdict
    assert not status.healthy and "disabled or pending deletion" in status.healthz
    calls = dict(kek.calls)
    assert await service.decrypt(sealed.ciphertext, sealed.key_id) == dek
    assert kek.calls == calls  # from the KEK kmsplug holds: no remote call

    kek.disabled = False  # re-enabled in the KMS: the next probe lifts it
    await service.probe()
    assert service.apiserver_status().healthy
    assert (await service.encrypt(dek)).key_id == sealed.key_id


async def test_an_unreachable_kms_is_not_a_revocation() -> None:
    kek, service = await started()
    kek.down = True
    await service.probe()
    assert not service.status().healthy and "ProviderUnavailable" in service.status().healthz
    sealed = await service.encrypt(os.urandom(32))  # the local KEK still seals
    assert service.apiserver_status().key_id == sealed.key_id  # Status still answers
    with pytest.raises(ProviderUnavailable):  # the same outage on the probe, not a refusal
        await kek.health()


async def test_the_revoked_status_is_the_one_the_apiserver_sees() -> None:
    import grpc

    from kmsplug.servicers import status_for

    code, message = status_for(KeyRevoked("key is disabled (KMS host, key k, request r)"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "disabled or pending deletion" in message and "request r" not in message
