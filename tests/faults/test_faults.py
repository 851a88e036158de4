"""Faults injected by real mechanisms (the fake KMS's hang mode, kill -9, sustained load),
bounded in time, on loopback only. Each test prints what the apiserver-facing calls saw.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kmsplug.client import KmsClient
from kmsplug.providers.resilient import ResiliencePolicy
from kmsplug.server import MAX_CONCURRENT_STREAMS

from fakes.alibaba_kms import FakeAlibabaKms
from fakes.alibaba_provider import env_for
from plugin_process import PluginFactory, PluginProcess

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def fake() -> Iterator[FakeAlibabaKms]:
    kms = FakeAlibabaKms().start()
    yield kms
    kms.stop()


def alibaba_plugin(
    fake: FakeAlibabaKms, plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[PluginProcess, str]:
    key = fake.create_key()
    for name, value in env_for(fake).items():
        monkeypatch.setenv(name, value)
    plugin = plugin_factory(
        *("--provider", "alibaba", "--key-id", key, "--region", fake.region),
        *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
        *args,
    )
    return plugin, key


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


async def test_kms_hanging_keeps_secrets_flowing_and_recovers(
    fake: FakeAlibabaKms, plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin, _ = alibaba_plugin(fake, plugin_factory, monkeypatch, "--health-probe-interval", "1")
    # seconds of a KMS that accepts and never answers (bounded; `make fault-long`: 10 min)
    outage = float(os.environ.get("KMSPLUG_FAULT_SECONDS", "12"))
    async with KmsClient(plugin.endpoint, timeout=3) as client:
        stored = [await client.v1_encrypt(secrets.token_bytes(32)) for _ in range(50)]
        fake.set_hang(True)
        hang_started = time.monotonic()
        errors, latencies, unhealthy_after = 0, [], None
        while time.monotonic() - hang_started < outage:
            started = time.monotonic()
            try:
                await client.v1_decrypt(stored[len(latencies) % len(stored)])
                await client.v1_encrypt(secrets.token_bytes(32))
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.monotonic() - started)
            status = await client.v2_status()
            if status.healthz != "ok" and unhealthy_after is None:
                unhealthy_after = time.monotonic() - hang_started
            await anyio.sleep(0.01)
        fake.set_hang(False)
        recovered_at = time.monotonic()
        while (await client.v2_status()).healthz != "ok":
            assert time.monotonic() - recovered_at < 15, "no recovery without a restart"
            await anyio.sleep(0.1)
        recovery = time.monotonic() - recovered_at
    print(
        f"KMS hang {outage:.0f} s: {len(latencies)} encrypt+decrypt pairs, {errors} errors, "
        f"p99 {p99(latencies) * 1000:.1f} ms; Status unhealthy after {unhealthy_after:.1f} s; "
        f"healthy again {recovery:.1f} s after the KMS answered"
    )
    assert errors == 0
    assert p99(latencies) < 0.5
    assert unhealthy_after is not None and unhealthy_after < 1 + 2.5 + 1.5  # poll + deadline


async def test_cold_start_of_50k_ciphertexts_costs_one_call_per_local_kek(
    fake: FakeAlibabaKms, plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50,000 ciphertexts of one local KEK, opened by a restarted plugin: one unwrap.

    The fake KMS shares this process with the client. If an answer is late (a loaded
    machine, or this process busy), kmsplug retries that one unwrap: the KMS sees another
    Decrypt, yet kmsplug still made one unwrap for all 50,000. So the counts are kmsplug's
    (one successful unwrap, at most the policy's attempts) and the KMS's must be attempts of
    it. Callers are a pool of 64 tasks, not 50,000 tasks at a semaphore: starting those
    kept this process (and the fake in it) busy for seconds, right when the unwrap ran.
    """
    plugin, key = alibaba_plugin(fake, plugin_factory, monkeypatch)
    deks = [secrets.token_bytes(32) for _ in range(50_000)]
    ciphertexts: list[bytes] = [b""] * len(deks)
    async with KmsClient(plugin.endpoint, timeout=30) as client:

        async def seal(todo: Iterator[int]) -> None:
            for i in todo:
                ciphertexts[i] = await client.v1_encrypt(deks[i])

        await in_pool(seal, len(deks))
    plugin.terminate()
    restarted = plugin_factory(
        *("--provider", "alibaba", "--key-id", key, "--region", fake.region),
        *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
        # no background health probe (a wrap and an unwrap) inside the counted window
        *("--health-probe-interval", "3600"),
        key_file=plugin.key_file,
        endpoint=plugin.endpoint,
    )
    fake.reset_stats()
    before = remote_calls(restarted, "unwrap")  # 0: the start-up probe is a "health" call
    wrong = 0
    async with KmsClient(restarted.endpoint, timeout=30) as client:

        async def open_some(todo: Iterator[int]) -> None:
            nonlocal wrong
            for i in todo:
                if await client.v1_decrypt(ciphertexts[i]) != deks[i]:
                    wrong += 1

        started = time.monotonic()
        await in_pool(open_some, len(deks))
        seconds = time.monotonic() - started
    decrypts = fake.count("Decrypt")
    unwraps = remote_calls(restarted, "unwrap", "ok")
    attempts = remote_calls(restarted, "unwrap") - before
    print(
        f"cold start: 50,000 v1 Decrypts in {seconds:.1f} s cost {unwraps:.0f} unwrap(s) in "
        f"{attempts:.0f} attempt(s), {decrypts} KMS Decrypt call(s)"
    )
    assert wrong == 0
    assert unwraps == 1  # one local KEK sealed them all: one unwrap, shared and cached
    assert attempts <= ResiliencePolicy().max_attempts  # retries of that unwrap only
    assert 1 <= decrypts <= attempts  # every KMS Decrypt was one of its attempts


async def in_pool(work: Callable[[Iterator[int]], Coroutine[Any, Any, None]], count: int) -> None:
    """Run `work` in 64 tasks that share the indexes 0..count-1 between them."""
    todo = iter(range(count))
    async with anyio.create_task_group() as tasks:
        for _ in range(64):
            tasks.start_soon(work, todo)


async def test_kill_9_under_load_loses_nothing_acknowledged(plugin_factory: PluginFactory) -> None:
    plugin = plugin_factory()
    acknowledged: list[tuple[bytes, bytes]] = []
    async with KmsClient(plugin.endpoint, timeout=5) as client:

        async def writer() -> None:
            while True:
                dek = secrets.token_bytes(32)
                try:
                    cipher = await client.v1_encrypt(dek)
                except grpc.aio.AioRpcError:
                    return  # the plugin died mid-call: not acknowledged, not counted
                acknowledged.append((dek, cipher))

        async with anyio.create_task_group() as tasks:
            for _ in range(16):
                tasks.start_soon(writer)
            while len(acknowledged) < 2000:  # noqa: ASYNC110 - waiting for load to build
                await anyio.sleep(0.01)
            plugin.signal(signal.SIGKILL)
    plugin.wait()
    restarted = plugin_factory(key_file=plugin.key_file, endpoint=plugin.endpoint)  # stale socket
    async with KmsClient(restarted.endpoint, timeout=10) as client:
        opened = [await client.v1_decrypt(cipher) for _, cipher in acknowledged]
    assert opened == [dek for dek, _ in acknowledged]
    print(f"kill -9 after {len(acknowledged)} acknowledged Encrypts: all decrypt after restart")


async def test_sustained_mixed_load_keeps_memory_flat_and_rotates(
    plugin_factory: PluginFactory,
) -> None:
    """Mixed load for at least 20 s and until the local KEK rotated 5 times (bounded):
    a count of seals, not a rate, so a loaded machine takes longer, not fails (at load
    17-25 on 2 cores 20 s made exactly the 5 rotations the test asked for)."""
    # A small seal budget makes the local KEK rotate many times during the run.
    plugin = plugin_factory("--kek-rotate-after-seals", "2000", "--kek-max-seals", "4000")

    def rss_mib() -> float:
        status = Path(f"/proc/{plugin.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    errors = 0
    samples: list[float] = []
    early: list[tuple[bytes, bytes]] = []
    rotations = 0.0  # the first local KEK, made at start, counts as one
    async with KmsClient(plugin.endpoint, timeout=5) as client:
        started = time.monotonic()
        give_up = started + 120  # only a plugin that stopped rotating gets here

        def go_on() -> bool:
            enough = time.monotonic() - started >= 20 and rotations >= 5
            return not enough and time.monotonic() < give_up

        async def worker(n: int) -> None:
            nonlocal errors
            while go_on():
                dek = secrets.token_bytes(32)
                try:
                    if n % 2:
                        cipher = await client.v1_encrypt(dek)
                        assert await client.v1_decrypt(cipher) == dek
                        if len(early) < 100:
                            early.append((dek, cipher))
                    else:
                        sealed = await client.v2_encrypt(dek)
                        assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
                except (grpc.aio.AioRpcError, AssertionError):
                    errors += 1

        async def sampler() -> None:
            nonlocal rotations
            while go_on():
                samples.append(rss_mib())
                rotations = await anyio.to_thread.run_sync(local_kek_rotations, plugin)
                await anyio.sleep(1)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sampler)
            for n in range(16):
                tasks.start_soon(worker, n)
        seconds = time.monotonic() - started
        assert [await client.v1_decrypt(c) for _, c in early] == [d for d, _ in early]
    settled = samples[len(samples) // 3 :]
    print(
        f"{seconds:.0f} s mixed load: {errors} errors; RSS {min(settled):.0f}-"
        f"{max(settled):.0f} MiB; {rotations:.0f} local KEK rotations"
    )
    assert rotations >= 5  # the seal budget ran out many times under load: rotated in time
    assert errors == 0
    assert max(settled) - min(settled) < 16  # flat: no growth beyond the bounded caches


#: kmsplug's budget for one remote operation in the throttled test (seconds).
REMOTE_DEADLINE = 2.0


async def test_throttled_slow_kms_never_holds_a_call_past_the_apiserver_deadline(
    fake: FakeAlibabaKms, plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quota below the offered load plus 300 ms per KMS call: cold decrypts of many local
    KEKs either succeed or fail fast; none waits past the apiserver's 3 s.

    The clock of a call starts when the plugin can see it. kmsplug serves at most
    MAX_CONCURRENT_STREAMS calls per connection; a client queues the rest itself (grpc
    core as grpc-go does), and a queued call's time is spent before kmsplug knows of it.
    So the load is as many callers as the plugin admits, less a margin, each taking the
    next ciphertext as soon as it has an answer: every call is in the plugin while timed.
    (400 calls at once measured 3.3-3.6 s for the last ones on a quiet machine, each
    under 2.5 s inside the plugin.) The remote deadline is 2 s here, not the default 2.5:
    the second left of the apiserver's 3 s is for the scheduler of a loaded machine (a
    call took 2.7 s at load 22 with 2.5), not for kmsplug's waits, which all count
    against the deadline (retries, backoff, the rate limiter, a shared unwrap).
    """
    plugin, key = alibaba_plugin(
        fake, plugin_factory, monkeypatch, "--kek-rotate-after-seals", "20", "--kek-max-seals", "20"
    )
    async with KmsClient(plugin.endpoint, timeout=10) as client:
        sealed = []
        for _ in range(400):  # 20 DEKs per local KEK: ~20 distinct KEKs to unwrap later
            sealed.append(await client.v1_encrypt(secrets.token_bytes(32)))
    restarted = plugin_factory(
        *("--provider", "alibaba", "--key-id", key, "--region", fake.region),
        *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
        *("--remote-deadline", str(REMOTE_DEADLINE)),
        key_file=plugin.key_file,
        name="restarted",
    )
    fake.set_qps(5, burst=2)
    fake.set_latency(0.3)
    # one ciphertext of each local KEK in turn: the first calls find every KEK cold at once
    pending = [sealed[i] for first in range(20) for i in range(first, len(sealed), 20)]
    callers = MAX_CONCURRENT_STREAMS - 28
    latencies: list[float] = []
    outcomes = {"ok": 0, "unavailable": 0, "other": 0}
    async with KmsClient(restarted.endpoint, timeout=10) as client:

        async def caller() -> None:
            while pending:
                ciphertext = pending.pop(0)
                started = time.monotonic()
                try:
                    await client.v1_decrypt(ciphertext)
                    outcomes["ok"] += 1
                except grpc.aio.AioRpcError as exc:
                    ok = exc.code() == grpc.StatusCode.UNAVAILABLE
                    outcomes["unavailable" if ok else "other"] += 1
                latencies.append(time.monotonic() - started)

        async with anyio.create_task_group() as tasks:
            for _ in range(callers):
                tasks.start_soon(caller)
    worst = max(latencies)
    unwrapped = remote_calls(restarted, "unwrap", "ok")
    print(
        f"quota 5/s + 300 ms KMS, {len(sealed)} cold v1 Decrypts over ~20 KEKs by {callers} "
        f"callers: {outcomes}, p99 {p99(latencies) * 1000:.0f} ms, max {worst * 1000:.0f} ms, "
        f"{unwrapped:.0f} unwraps succeeded for kmsplug; the KMS answered "
        f"{fake.count('Decrypt', 'Success')} of {fake.count('Decrypt')} Decrypts (429s "
        "included; some answered after kmsplug had given up)"
    )
    assert len(latencies) == len(sealed)
    assert outcomes["other"] == 0
    assert outcomes["ok"] > 0
    assert worst < REMOTE_DEADLINE + 1.0  # the apiserver's 3 s
    # single-flight, then the cache: one successful unwrap per distinct local KEK at most
    # (20 DEKs each). A KEK whose unwrap failed is tried again by a later call.
    assert 1 <= unwrapped <= len(sealed) // 20 + 1


def remote_calls(plugin: PluginProcess, operation: str, outcome: str | None = None) -> float:
    """kmsplug's count of remote call attempts by operation and outcome (any if None),
    from /metrics."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape(plugin))
        if family.name == "kmsplug_remote_calls"
        for sample in family.samples
        if sample.name == "kmsplug_remote_calls_total"
        and sample.labels.get("operation") == operation
        and outcome in (None, sample.labels.get("outcome"))
    )


def local_kek_rotations(plugin: PluginProcess) -> float:
    """kmsplug's count of local KEKs made (the first at start included), from /metrics."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape(plugin))
        for sample in family.samples
        if sample.name == "kmsplug_local_kek_rotations_total"
    )


def scrape(plugin: PluginProcess) -> str:
    with urllib.request.urlopen(plugin.http_url + "/metrics", timeout=10) as response:  # noqa: S310
        return str(response.read().decode())
