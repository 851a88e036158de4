"""The per-call metrics are plain counters exported at scrape time; an operator's
dashboards must see exactly what prometheus_client's Counter and Histogram showed."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kmsplug.metrics import LATENCY_BUCKETS, Metrics

CALLS = [
    ("v1beta1", "Encrypt", "OK", 5e-6),
    ("v2", "Status", "OK", 1e-5),  # exactly on a bound: counted in le="1e-05"
    ("v1beta1", "Encrypt", "OK", 3e-5),
    ("v1beta1", "Decrypt", "INVALID_ARGUMENT", 4e-5),
    ("v1beta1", "Encrypt", "UNAVAILABLE", 0.0002),
    ("v1beta1", "Encrypt", "OK", 0.0002),
    ("v1beta1", "Encrypt", "OK", 7.0),  # beyond the last bound: only +Inf
    ("v2", "Status", "OK", 0.0),
]


def _reference() -> CollectorRegistry:
    """What kmsplug exported before: prometheus_client's own instruments."""
    registry = CollectorRegistry()
    requests = Counter(
        "kmsplug_requests",
        "gRPC calls handled, by API version, method and status code.",
        ["api", "method", "code"],
        registry=registry,
    )
    latency = Histogram(
        "kmsplug_request_duration_seconds",
        "Time spent handling a gRPC call inside the plugin.",
        ["api", "method"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for api, method, code, seconds in CALLS:
        requests.labels(api, method, code).inc()
        latency.labels(api, method).observe(seconds)
    return registry


def _samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample but the _created timestamps' values (they differ by when)."""
    found = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = 0.0 if sample.name.endswith("_created") else sample.value
            found.add((sample.name, tuple(sorted(sample.labels.items())), value))
    return found


def test_exposition_matches_prometheus_client_instruments() -> None:
    metrics = Metrics()
    for call in CALLS:
        metrics.observe(*call)
    ours = generate_latest(metrics.registry).decode()
    theirs = generate_latest(_reference()).decode()
    assert _samples(ours) == _samples(theirs)
    # the same families, HELP and TYPE lines in the same order
    assert re.findall(r"^# .*$", ours, re.M) == re.findall(r"^# .*$", theirs, re.M)
    assert (
        'kmsplug_request_duration_seconds_bucket{api="v2",le="1e-05",method="Status"} 2.0' in ours
    )


def test_no_calls_yet_shows_the_families_without_series() -> None:
    ours = generate_latest(Metrics().registry).decode()
    registry = CollectorRegistry()
    Counter("kmsplug_requests", "gRPC calls handled, by API version, method and status code.",
            ["api", "method", "code"], registry=registry)  # fmt: skip
    Histogram("kmsplug_request_duration_seconds",
              "Time spent handling a gRPC call inside the plugin.", ["api", "method"],
              buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
    assert ours == generate_latest(registry).decode()
