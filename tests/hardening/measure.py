"""What the hardening tests measure of a running plugin: its memory and its answers."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import anyio
import grpc

from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint


def rss_mb(pid: int) -> float:
    """Resident memory of a process now, in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise LookupError("no VmRSS")


@dataclass
class StatusProbe:
    """Status calls one after another on a connection of their own, for a while."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def p(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.inf
        return ordered[min(len(ordered) - 1, math.ceil(quantile * len(ordered)) - 1)]

    async def run(self, endpoint: Endpoint, pid: int, seconds: float, deadline: float) -> None:
        """Ask Status every 10 ms for `seconds`, each with `deadline`; watch RSS too."""
        async with KmsClient(endpoint, timeout=deadline) as client:
            await client.v2_status(wait_for_ready=True)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    status = await client.v2_status()
                except grpc.aio.AioRpcError as exc:
                    self.failures.append(exc.code().name)
                    self.latencies.append(math.inf)  # no answer in time counts as slowest
                else:
                    self.latencies.append(time.perf_counter() - started)
                    if status.healthz != "ok":
                        self.failures.append(f"healthz {status.healthz}")
                self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(pid))
                await anyio.sleep(0.01)

    def summary(self) -> str:
        return (
            f"{len(self.latencies) - len(self.failures)} Status answered, "
            f"{len(self.failures)} failed, "
            f"p50 {self.p(0.5) * 1000:.1f} ms, p99 {self.p(0.99) * 1000:.1f} ms, "
            f"max {self.p(1.0) * 1000:.1f} ms, peak RSS {self.peak_rss_mb:.0f} MiB, "
            f"failures {sorted(set(self.failures))}"
        )
