"""`kmsplug bench`: drive any KMS plugin socket the way kube-apiserver does, and measure.

Workloads (every loop bounded by time and by a request cap):
- v1-write: one v1 Encrypt per Secret write (fresh 32-byte DEK each time).
- v1-read: reads of N stored Secrets through an apiserver-style LRU DEK cache of
  `--cache-size` entries: only misses reach the plugin as Decrypt.
- v2-cold: an apiserver restart: one v2 Decrypt per distinct stored seed.
- v2-status: Status polling, as health probes do.
- mixed: `--read-ratio` reads (v1-read) and the rest writes (v1-write).
Reports throughput, latency percentiles (p50/p90/p99/p99.9) and errors by gRPC code.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

import anyio
import grpc

from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint

WORKLOADS = ("v1-write", "v1-read", "v2-cold", "v2-status", "mixed")


@dataclass
class Result:
    workload: str
    concurrency: int
    seconds: float
    requests: int = 0
    plugin_calls: int = 0
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


class DekCache:
    """kube-apiserver's v1 DEK cache: an LRU keyed by the encrypted DEK."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        if self.size <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class Plan:
    workload: str
    concurrency: int
    duration: float
    max_requests: int = 1_000_000
    stored: int = 2_000
    cache_size: int = 1_000
    read_ratio: float = 0.9


async def run(
    endpoint: Endpoint, plan: Plan, progress: Callable[[int], object] | None = None
) -> Result:
    if plan.workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}")
    async with KmsClient(endpoint, timeout=10) as client:
        await client.v2_status(wait_for_ready=True)
        op = await _prepare(client, plan)
        result = Result(plan.workload, plan.concurrency, 0.0)
        errors: Counter[str] = Counter()
        end = time.monotonic() + plan.duration
        started = time.monotonic()

        async def worker() -> None:
            while time.monotonic() < end and result.requests < plan.max_requests:
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

        async with anyio.create_task_group() as tasks:
            for _ in range(plan.concurrency):
                tasks.start_soon(worker)
        result.seconds = time.monotonic() - started
        result.errors = dict(errors)
        return result


async def _prepare(client: KmsClient, plan: Plan) -> Callable[[], Awaitable[int]]:
    """Store what the workload reads; return one operation (it says how many plugin calls)."""

    async def write() -> int:
        await client.v1_encrypt(secrets.token_bytes(32))
        return 1

    if plan.workload == "v1-write":
        return write
    if plan.workload == "v2-status":

        async def status() -> int:
            await client.v2_status()
            return 1

        return status
    if plan.workload == "v2-cold":
        sealed = [await client.v2_encrypt(secrets.token_bytes(32)) for _ in range(plan.stored)]
        order = iter(sealed * (plan.max_requests // max(1, len(sealed)) + 1))

        async def cold() -> int:
            item = next(order)
            await client.v2_decrypt(item.ciphertext, item.key_id, item.annotations)
            return 1

        return cold
    stored = [await client.v1_encrypt(secrets.token_bytes(32)) for _ in range(plan.stored)]
    cache = DekCache(plan.cache_size)
    rng = random.Random(7)  # noqa: S311 - which Secret to read, not cryptography

    async def read() -> int:
        cipher = stored[rng.randrange(len(stored))]
        if cache.get(cipher) is not None:
            return 0
        cache.put(cipher, await client.v1_decrypt(cipher))
        return 1

    if plan.workload == "v1-read":
        return read

    async def mixed() -> int:
        return await (read() if rng.random() < plan.read_ratio else write())

    return mixed


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
            ",".join(f"{k}:{v}" for k, v in sorted(r.errors.items())) or "0",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
