"""`kmsplug bench`: drive any KMS plugin socket the way kube-apiserver does, and measure.

Workloads: kmsplug.bench.workloads (every loop bounded by time and by a request cap).
Reports throughput, latency percentiles (p50/p90/p99/p99.9), errors by gRPC code, and,
given the plugin's Prometheus endpoint, the remote KMS calls it made during each run.
"""

from __future__ import annotations

import random
import secrets
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import grpc
from cachetools import LRUCache
from prometheus_client.parser import text_string_to_metric_families

from kmsplug.bench.workloads import WORKLOADS as WORKLOAD_MODELS
from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError

WORKLOADS = tuple(WORKLOAD_MODELS)
#: kmsplug's counter of remote KMS calls (every provider, operation and outcome).
KMSPLUG_REMOTE_CALLS = "kmsplug_remote_calls"


@dataclass
class Result:
    workload: str
    concurrency: int
    seconds: float
    requests: int = 0
    plugin_calls: int = 0
    #: calls the plugin made to its KMS during the run (None: not exposed / not asked)
    remote_calls: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0

    def summary(self) -> dict[str, object]:
        row = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        row["rps"] = round(self.rps, 1)
        for name, p in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99), ("p999_ms", 0.999)):
            row[name] = round(self.percentile(p), 3)
        return row


@dataclass(frozen=True)
class Plan:
    workload: str
    concurrency: int
    duration: float
    max_requests: int = 1_000_000
    stored: int = 2_000
    cache_size: int = 1_000
    read_ratio: float = 0.9
    payload_size: int = 32  # the DEK (v1) or DEK seed (v2) the apiserver sends
    burst_interval: float = 0.5
    status_interval: float = 60.0  # kube-apiserver polls a healthy v2 plugin every minute


class CallCounter(Protocol):
    """Anything that reads a running total of the plugin's remote KMS calls."""

    def read(self) -> int: ...


@dataclass(frozen=True)
class RemoteCounter:
    """Reads a plugin's remote-KMS call counters from its Prometheus endpoint.

    `metrics` are family names (without `_total`); every sample of them is summed, so
    kmsplug's counter or a peer's (e.g. one labelled by operation) both work.
    """

    url: str
    metrics: Sequence[str] = (KMSPLUG_REMOTE_CALLS,)

    def read(self) -> int:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:  # noqa: S310
                text = response.read().decode()
        except OSError as exc:
            raise ConfigError(f"cannot read metrics from {self.url}: {exc}") from None
        wanted = {m.removesuffix("_total") for m in self.metrics}
        total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name in wanted:
                total += sum(s.value for s in family.samples if not s.name.endswith("_created"))
        return int(total)


async def run(
    endpoint: Endpoint,
    plan: Plan,
    progress: Callable[[int], object] | None = None,
    remote: CallCounter | None = None,
) -> Result:
    if plan.workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}")
    async with KmsClient(endpoint, timeout=10) as client:
        await _wait_ready(client)
        op = await _prepare(client, plan)
        cap = (
            min(plan.max_requests, plan.stored) if plan.workload == "v1-cold" else plan.max_requests
        )
        result = Result(plan.workload, plan.concurrency, 0.0)
        errors: Counter[str] = Counter()
        before = await anyio.to_thread.run_sync(remote.read) if remote else 0
        end = time.monotonic() + plan.duration
        started = time.monotonic()

        async def one() -> None:
            result.requests += 1
            t0 = time.perf_counter()
            try:
                calls = await op()  # not `+= await`: that reads the total before awaiting
                result.plugin_calls += calls
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if progress is not None:
                progress(1)

        async def worker() -> None:
            while time.monotonic() < end and result.requests < cap:
                await one()

        if plan.workload == "v1-burst":
            while time.monotonic() < end and result.requests < cap:
                async with anyio.create_task_group() as tasks:
                    for _ in range(min(plan.concurrency, cap - result.requests)):
                        tasks.start_soon(one)
                await anyio.sleep(max(0.0, min(plan.burst_interval, end - time.monotonic())))
        else:
            async with anyio.create_task_group() as tasks:
                for _ in range(plan.concurrency):
                    tasks.start_soon(worker)
        result.seconds = time.monotonic() - started
        if remote is not None:
            result.remote_calls = await anyio.to_thread.run_sync(remote.read) - before
        result.errors = dict(errors)
        return result


async def _wait_ready(client: KmsClient) -> None:
    """Wait for the socket; a v1-only plugin answers Version instead of Status."""
    try:
        await client.v2_status(wait_for_ready=True)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        await client.v1_version()


async def _prepare(client: KmsClient, plan: Plan) -> Callable[[], Awaitable[int]]:
    """Store what the workload reads; return one operation (it says how many plugin calls)."""

    def payload() -> bytes:
        return secrets.token_bytes(plan.payload_size)

    async def write() -> int:
        await client.v1_encrypt(payload())
        return 1

    if plan.workload in ("v1-write", "v1-burst"):
        return write
    if plan.workload == "v2-write":
        return _v2_writer(client, plan, payload)
    if plan.workload == "v2-status":

        async def status() -> int:
            await client.v2_status()
            return 1

        return status
    if plan.workload == "v2-cold":
        sealed = [await client.v2_encrypt(payload()) for _ in range(plan.stored)]
        order = iter(sealed * (plan.max_requests // max(1, len(sealed)) + 1))

        async def cold() -> int:
            item = next(order)
            await client.v2_decrypt(item.ciphertext, item.key_id, item.annotations)
            return 1

        return cold
    stored = [await client.v1_encrypt(payload()) for _ in range(plan.stored)]
    if plan.workload == "v1-cold":
        unread = iter(stored)

        async def cold_read() -> int:
            await client.v1_decrypt(next(unread))
            return 1

        return cold_read
    # kube-apiserver's v1 DEK cache: an LRU keyed by the encrypted DEK (0: no cache).
    cache: LRUCache[bytes, bytes] | None = (
        LRUCache(maxsize=plan.cache_size) if plan.cache_size > 0 else None
    )
    rng = random.Random(7)  # noqa: S311 - which Secret to read, not cryptography

    async def read() -> int:
        cipher = stored[rng.randrange(len(stored))]
        if cache is not None and cache.get(cipher) is not None:  # a hit: most recently used
            return 0
        plain = await client.v1_decrypt(cipher)
        if cache is not None:
            cache[cipher] = plain
        return 1

    if plan.workload == "v1-read":
        return read

    async def mixed() -> int:
        return await (read() if rng.random() < plan.read_ratio else write())

    return mixed


@dataclass
class _DekSeed:
    """What a v2 apiserver keeps between writes: the key_id and the DEK seed under it."""

    key_id: str | None = None
    aead: Any = None
    checked: float = -float("inf")


def _v2_writer(
    client: KmsClient, plan: Plan, payload: Callable[[], bytes]
) -> Callable[[], Awaitable[int]]:
    """One Secret write as a v2 apiserver makes it; returns the plugin calls it needed."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    seed = _DekSeed()
    refreshing = anyio.Lock()  # concurrent writers share one check, as the apiserver does

    def due() -> bool:
        return seed.aead is None or time.monotonic() - seed.checked >= plan.status_interval

    async def write() -> int:
        calls = 0
        if due():
            async with refreshing:
                if due():
                    key_id = (await client.v2_status()).key_id
                    calls += 1
                    if key_id != seed.key_id:  # a new key: a new DEK seed, wrapped once
                        fresh = secrets.token_bytes(32)
                        await client.v2_encrypt(fresh)
                        seed.key_id, seed.aead = key_id, AESGCM(fresh)
                        calls += 1
                    seed.checked = time.monotonic()
        seed.aead.encrypt(secrets.token_bytes(12), payload(), None)
        await anyio.lowlevel.checkpoint()  # a write that needed no call still yields
        return calls

    return write


def table(results: list[Result]) -> str:
    header = (
        "WORKLOAD",
        "IN FLIGHT",
        "REQ/S",
        "P50 ms",
        "P90 ms",
        "P99 ms",
        "P99.9 ms",
        "CALLS",
        "REMOTE",
        "ERRORS",
    )
    rows = [header] + [
        (
            r.workload,
            str(r.concurrency),
            f"{r.rps:.0f}",
            f"{r.percentile(0.5):.2f}",
            f"{r.percentile(0.9):.2f}",
            f"{r.percentile(0.99):.2f}",
            f"{r.percentile(0.999):.2f}",
            str(r.plugin_calls),
            "-" if r.remote_calls is None else str(r.remote_calls),
            ",".join(f"{k}:{v}" for k, v in sorted(r.errors.items())) or "0",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
