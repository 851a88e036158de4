"""Prometheus metrics: what an operator watches, none of it secret.

Per-call figures are plain numbers, counted on the event loop (a dict entry and a list
slot per call, no locks: ~0.45 us a call, where prometheus_client's bound Counter and
Histogram take ~2.2 us in locks and Python), and turned into the same metric families at
scrape time by a collector, as keyring and provider figures are. key_id appears only as
a short SHA-256 hash, like the apiserver's own metrics.
"""

from __future__ import annotations

import hashlib
import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from kmsplug.service import KeyService

#: 10 us .. 5 s: resolves the tens of microseconds a local call takes.
LATENCY_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_BOUNDS = (*LATENCY_BUCKETS, math.inf)
_LE: tuple[str, ...] = tuple(floatToGoString(bound) for bound in _BOUNDS)  # type: ignore[no-untyped-call]

REQUESTS = "kmsplug_requests"
REQUESTS_HELP = "gRPC calls handled, by API version, method and status code."
LATENCY = "kmsplug_request_duration_seconds"
LATENCY_HELP = "Time spent handling a gRPC call inside the plugin."


def key_id_hash(key_id: str) -> str:
    return "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()[:16]


class CallCounter:
    """One API method's calls so far: by status code, and a latency histogram.

    The servicer holds one per method (`Metrics.calls`), so counting a call is one method
    call on the event loop: no label lookup, no lock (calls and scrapes share the loop).
    """

    __slots__ = ("buckets", "codes", "codes_created", "created", "sum")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.codes_created: dict[str, float] = {}
        self.buckets = [0] * len(_BOUNDS)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = 0.0  # set by the first call: the series appear with it

    def observe(self, code: str, seconds: float) -> None:
        codes = self.codes
        try:
            codes[code] += 1
        except KeyError:  # the first call with this code makes its series, as labels() did
            now = time.time()
            if not codes:
                self.created = now
            self.codes_created[code] = now
            codes[code] = 1
        self.buckets[bisect_left(_BOUNDS, seconds)] += 1
        self.sum += seconds


class Metrics:
    """The plugin's instruments, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._calls: dict[tuple[str, str], CallCounter] = {}
        self.registry.register(_CallCollector(self._calls))

    def calls(self, api: str, method: str) -> CallCounter:
        """The counter of one API method's calls (exported once it counted a call)."""
        counter = self._calls.get((api, method))
        if counter is None:
            counter = self._calls[(api, method)] = CallCounter()
        return counter

    def observe(self, api: str, method: str, code: str, seconds: float) -> None:
        """Count one call (servicers hold their `calls` counters instead: no lookup)."""
        self.calls(api, method).observe(code, seconds)

    def watch(self, service: KeyService) -> None:
        """Report the service's keyring, provider and health figures at scrape time."""
        self.registry.register(_ServiceCollector(service))


class _CallCollector(Collector):
    """kmsplug_requests_total and kmsplug_request_duration_seconds, as prometheus_client's
    Counter and Histogram expose them (with their _created series, unless turned off)."""

    def __init__(self, calls: dict[tuple[str, str], CallCounter]) -> None:
        self.calls = calls

    def collect(self) -> Iterator[Metric]:
        created = getattr(prometheus_metrics, "_use_created", True)
        requests = CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=["api", "method", "code"])
        latency = Metric(LATENCY, LATENCY_HELP, "histogram")
        for (api, method), calls in list(self.calls.items()):
            if not calls.codes:  # no call yet: no series, as before a labels() call
                continue
            for code, count in list(calls.codes.items()):
                requests.add_metric(
                    [api, method, code],
                    float(count),
                    created=calls.codes_created[code] if created else None,
                )
            labels = {"api": api, "method": method}
            cumulative = 0
            for le, count in zip(_LE, list(calls.buckets), strict=True):
                cumulative += count
                latency.add_sample(f"{LATENCY}_bucket", {**labels, "le": le}, float(cumulative))
            latency.add_sample(f"{LATENCY}_count", labels, float(cumulative))
            latency.add_sample(f"{LATENCY}_sum", labels, calls.sum)
            if created:
                latency.add_sample(f"{LATENCY}_created", labels, calls.created)
        yield requests
        yield latency


class _ServiceCollector(Collector):
    def __init__(self, service: KeyService) -> None:
        self.service = service

    def collect(self) -> Iterator[Family]:
        service = self.service
        sealer = service.sealer
        stats = sealer.stats()
        healthy = GaugeMetricFamily(
            "kmsplug_healthy", "1 when the last health probe of the write KEK passed."
        )
        healthy.add_metric([], 1.0 if service.status().healthy else 0.0)
        yield healthy
        key = GaugeMetricFamily(
            "kmsplug_key_id_info", "The current write key_id, hashed.", labels=["key_id_hash"]
        )
        key.add_metric([key_id_hash(sealer.key_id)], 1.0)
        yield key
        seals = GaugeMetricFamily(
            "kmsplug_local_kek_seals", "DEKs sealed under the current local KEK."
        )
        seals.add_metric([], float(stats.seals))
        yield seals
        age = GaugeMetricFamily("kmsplug_local_kek_age_seconds", "Age of the current local KEK.")
        age.add_metric([], float(stats.current_age_seconds))
        yield age
        rotations = CounterMetricFamily(
            "kmsplug_local_kek_rotations", "Local KEKs retired for a new one."
        )
        rotations.add_metric([], float(stats.rotations))
        yield rotations
        cache = GaugeMetricFamily("kmsplug_kek_cache_size", "Unwrapped local KEKs held in memory.")
        cache.add_metric([], float(stats.cache_len))
        yield cache
        lookups = CounterMetricFamily(
            "kmsplug_kek_cache_lookups", "Local KEK lookups on open.", labels=["result"]
        )
        lookups.add_metric(["hit"], float(stats.cache_hits))
        lookups.add_metric(["miss"], float(stats.cache_misses))
        yield lookups
        yield from _provider_metrics(service)


Family = GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily


def _provider_metrics(service: KeyService) -> Iterator[Family]:
    from kmsplug.providers.resilient import REMOTE_BUCKETS, Resilient

    calls = CounterMetricFamily(
        "kmsplug_remote_calls",
        "Calls to the remote KMS, by provider, operation and outcome.",
        labels=["provider", "operation", "outcome"],
    )
    retries = CounterMetricFamily(
        "kmsplug_remote_retries", "Remote calls retried.", labels=["provider"]
    )
    throttled = CounterMetricFamily(
        "kmsplug_remote_throttled", "Remote calls refused for quota.", labels=["provider"]
    )
    shared = CounterMetricFamily(
        "kmsplug_remote_unwraps_shared",
        "Unwraps answered by another caller's in-flight call (single-flight).",
        labels=["provider"],
    )
    latency = HistogramMetricFamily(
        "kmsplug_remote_call_duration_seconds",
        "Time of one remote KMS call attempt.",
        labels=["provider", "operation"],
    )
    expiry = GaugeMetricFamily(
        "kmsplug_credential_expiry_seconds",
        "Seconds until the provider's credential expires (renewed before it does).",
        labels=["provider"],
    )
    for provider in service.sealer.providers:
        if not isinstance(provider, Resilient):
            continue
        for operation, row in provider.stats.latency.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*REMOTE_BUCKETS, float("inf")), row[:-1], strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric([provider.kind, operation], buckets, sum_value=row[-1])
        left = provider.credential_seconds_left()
        if left is not None:
            expiry.add_metric([provider.kind], left)
        for (operation, outcome), count in provider.stats.calls.items():
            calls.add_metric([provider.kind, operation, outcome], float(count))
        retries.add_metric([provider.kind], float(provider.stats.retries))
        throttled.add_metric([provider.kind], float(provider.stats.throttled))
        shared.add_metric([provider.kind], float(provider.stats.shared_unwraps))
    yield from (calls, retries, throttled, shared, latency, expiry)
