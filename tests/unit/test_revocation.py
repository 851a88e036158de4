"""A revoked write key is not an outage (kmsplug.service).

When the KMS says the key is disabled or pending deletion (KeyRevoked), kmsplug seals
nothing new under it and its Status fails, while what it holds KEKs for still opens. An
unreachable KMS (ProviderUnavailable) only makes it unhealthy: both go on. Measured end to
end on three apiservers in tests/e2e/test_ha_revocation.py.
"""

from __future__ import annotations

import os

import pytest
from kek_doubles import CountingKek as RevocableKek

from kmsplug.errors import KeyRevoked, ProviderUnavailable
from kmsplug.sealer import Sealer
from kmsplug.service import KeyService

pytestmark = pytest.mark.anyio


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
