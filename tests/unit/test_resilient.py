"""The resilience layer: deadline, retries with jitter, quota, single-flight, audit."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from kmsplug.errors import (
    ProviderRefused,
    ProviderThrottled,
    ProviderTransient,
    ProviderUnavailable,
)
from kmsplug.providers.base import KekProvider
from kmsplug.providers.resilient import ResiliencePolicy, Resilient
from kmsplug.providers.shared import note_call

pytestmark = pytest.mark.anyio


class ScriptedKek(KekProvider):
    """Answers from a script of failures, then succeeds; counts every call."""

    kind = "scripted"

    def __init__(self, failures: list[Exception] | None = None, latency: float = 0.0) -> None:
        self.failures = list(failures or [])
        self.latency = latency
        self.calls = 0

    @property
    def key_id(self) -> str:
        return "scripted-1"

    async def _answer(self, value: bytes) -> bytes:
        self.calls += 1
        note_call(request_id=f"req-{self.calls}", key_version="v7")
        await anyio.sleep(self.latency)
        if self.failures:
            raise self.failures.pop(0)
        return value

    async def wrap(self, plaintext: bytes) -> bytes:
        return await self._answer(b"W" + plaintext)

    async def unwrap(self, wrapped: bytes) -> bytes:
        return await self._answer(wrapped[1:])

    async def health(self) -> None:
        await self._answer(b"")


async def test_throttling_is_retried_then_succeeds() -> None:
    inner = ScriptedKek([ProviderThrottled("429"), ProviderTransient("reset")])
    kek = Resilient(inner, ResiliencePolicy(backoff_base=0.001))
    assert await kek.wrap(b"x") == b"Wx"
    assert inner.calls == 3
    assert kek.stats.retries == 2
    assert kek.stats.throttled == 1


async def test_refusal_is_not_retried() -> None:
    inner = ScriptedKek([ProviderRefused("key disabled")])
    kek = Resilient(inner)
    with pytest.raises(ProviderRefused):
        await kek.wrap(b"x")
    assert inner.calls == 1


async def test_deadline_bounds_a_hanging_kms() -> None:
    inner = ScriptedKek(latency=30)
    kek = Resilient(inner, ResiliencePolicy(deadline=0.3))
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        await kek.unwrap(b"Wx")
    assert time.monotonic() - started < 1.0


async def test_attempts_are_bounded() -> None:
    inner = ScriptedKek([ProviderThrottled("429")] * 10)
    kek = Resilient(inner, ResiliencePolicy(max_attempts=3, backoff_base=0.001))
    with pytest.raises(ProviderUnavailable):
        await kek.wrap(b"x")
    assert inner.calls == 3


async def test_concurrent_unwraps_of_one_blob_share_one_call() -> None:
    inner = ScriptedKek(latency=0.05)
    kek = Resilient(inner)
    results: list[bytes] = []

    async def one() -> None:
        results.append(await kek.unwrap(b"Wsecret"))

    async with anyio.create_task_group() as tasks:
        for _ in range(50):
            tasks.start_soon(one)
    assert results == [b"secret"] * 50
    assert inner.calls == 1
    assert kek.stats.shared_unwraps == 49


async def test_token_bucket_keeps_under_the_rate() -> None:
    inner = ScriptedKek()
    kek = Resilient(inner, ResiliencePolicy(rate=100, burst=5, deadline=5))
    started = time.monotonic()
    for i in range(25):
        await kek.wrap(bytes([i]))
    # 5 from the burst, 20 more at 100/s: at least ~0.2 s
    assert time.monotonic() - started >= 0.18


async def test_every_remote_call_leaves_an_audit_record(caplog: pytest.LogCaptureFixture) -> None:
    inner = ScriptedKek([ProviderThrottled("429")])
    kek = Resilient(inner, ResiliencePolicy(backoff_base=0.001))
    with caplog.at_level(logging.INFO, logger="kmsplug.audit"):
        await kek.wrap(b"plaintext-must-not-appear")
    records = [r for r in caplog.records if r.name == "kmsplug.audit"]
    assert [(r.operation, r.outcome, r.attempt) for r in records] == [  # type: ignore[attr-defined]
        ("wrap", "throttled", 1),
        ("wrap", "ok", 2),
    ]
    assert records[1].request_id == "req-2" and records[1].key_version == "v7"  # type: ignore[attr-defined]
    assert all("plaintext" not in str(vars(r)) for r in records)


async def test_metrics_show_remote_latency_and_credential_expiry() -> None:
    from prometheus_client import generate_latest

    from kmsplug.metrics import Metrics
    from kmsplug.sealer import Sealer
    from kmsplug.service import KeyService

    class Expiring(ScriptedKek):
        def credential_seconds_left(self) -> float | None:
            return 42.0

    kek = Resilient(Expiring(latency=0.002))
    service = KeyService(Sealer(kek))
    await service.start()
    metrics = Metrics()
    metrics.watch(service)
    text = generate_latest(metrics.registry).decode()
    assert 'kmsplug_credential_expiry_seconds{provider="scripted"} 42.0' in text
    assert (
        'kmsplug_remote_call_duration_seconds_count{operation="wrap",provider="scripted"}' in text
    )
    assert 'le="+Inf",operation="wrap",provider="scripted"} 1.0' in text
