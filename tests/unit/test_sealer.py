"""The sealer with a remote-style provider: real AES-GCM, counted remote calls."""

from __future__ import annotations

import os
import secrets

import anyio
import anyio.lowlevel
import pytest
from kek_doubles import CountingKek

from kmsplug.core import RotationPolicy
from kmsplug.errors import InvalidCiphertext, ProviderUnavailable, UnknownKeyId
from kmsplug.sealer import Sealer
from kmsplug.service import KeyService

pytestmark = pytest.mark.anyio


async def test_one_wrap_serves_many_seals() -> None:
    kek = CountingKek()
    sealer = Sealer(kek)
    await sealer.start()
    deks = [secrets.token_bytes(32) for _ in range(500)]
    sealed = [await sealer.seal(dek) for dek in deks]
    assert {key_id for _, key_id in sealed} == {"test-key-1"}
    assert [await sealer.open(ct, "test-key-1") for ct, _ in sealed] == deks
    assert kek.calls["wrap"] == 1
    assert kek.calls["unwrap"] == 0


async def test_cold_start_costs_one_unwrap_per_local_kek() -> None:
    kek = CountingKek(latency=0.05)
    writer = Sealer(kek)
    await writer.start()
    deks = [secrets.token_bytes(32) for _ in range(2000)]
    sealed = [(await writer.seal(dek))[0] for dek in deks]
    restarted = Sealer(kek)  # a new process: nothing cached
    results: list[bytes | None] = [None] * len(sealed)

    async def open_one(i: int) -> None:
        results[i] = await restarted.open(sealed[i])

    async with anyio.create_task_group() as tasks:
        for i in range(len(sealed)):
            tasks.start_soon(open_one, i)
    assert results == deks
    assert kek.calls["unwrap"] == 1


async def test_unwrap_failure_reaches_every_waiter_then_recovers() -> None:
    kek = CountingKek(latency=0.01)
    writer = Sealer(kek)
    await writer.start()
    ciphertext, _ = await writer.seal(b"k" * 32)
    reader = Sealer(kek)
    kek.down = True
    errors: list[str] = []

    async def attempt() -> None:
        try:
            await reader.open(ciphertext)
        except ProviderUnavailable as exc:
            errors.append(type(exc).__name__)

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(attempt)
    assert errors == ["ProviderUnavailable"] * 20
    assert kek.calls["unwrap"] == 1
    kek.down = False
    assert await reader.open(ciphertext) == b"k" * 32


async def test_rotation_by_budget_keeps_old_ciphertexts_open() -> None:
    kek = CountingKek()
    sealer = Sealer(kek, policy=RotationPolicy(rotate_after_seals=10, max_seals=20))
    await sealer.start()
    deks = [secrets.token_bytes(32) for _ in range(200)]
    sealed = []
    for dek in deks:
        sealed.append((await sealer.seal(dek))[0])
        await anyio.lowlevel.checkpoint()  # let a background rotation run
    assert kek.calls["wrap"] >= 10
    assert [await sealer.open(ct) for ct in sealed] == deks
    assert sealer.stats().rotations >= 10


async def test_remote_key_change_rotates_and_changes_key_id() -> None:
    kek = CountingKek("key-v1")
    sealer = Sealer(kek)
    await sealer.start()
    old, old_id = await sealer.seal(b"a" * 32)
    kek.rotate_remote("key-v2")
    assert sealer.needs_rotation()
    await sealer.rotate()
    new, new_id = await sealer.seal(b"b" * 32)
    assert (old_id, new_id, sealer.key_id) == ("key-v1", "key-v2", "key-v2")
    assert await sealer.open(old, "key-v1") == b"a" * 32
    assert await sealer.open(new, "key-v2") == b"b" * 32
    with pytest.raises(UnknownKeyId):
        await sealer.open(new, "key-v1")


async def test_garbage_is_invalid_ciphertext() -> None:
    sealer = Sealer(CountingKek())
    await sealer.start()
    for blob in (b"", b"\xc9", b"dGVzdA==", b"1" + os.urandom(100), os.urandom(200)):
        with pytest.raises(InvalidCiphertext):
            await sealer.open(blob)


async def test_status_never_calls_the_provider() -> None:
    kek = CountingKek()
    service = KeyService(Sealer(kek))
    await service.start()
    before = dict(kek.calls)
    for _ in range(1000):
        status = service.status()
    assert status.healthz == "ok"
    assert status.key_id == "test-key-1"
    assert kek.calls == before


async def test_probe_flips_health_and_recovers() -> None:
    kek = CountingKek()
    service = KeyService(Sealer(kek))
    await service.start()
    kek.down = True
    await service.probe()
    assert not service.status().healthy
    assert "ProviderUnavailable" in service.status().healthz
    kek.down = False
    await service.probe()
    assert service.status().healthy
