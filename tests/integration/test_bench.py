"""`kmsplug bench` against a real plugin: counts add up, the DEK cache spares calls."""

from __future__ import annotations

import json
import subprocess
import sys

from kmsplug.bench import DekCache

from plugin_process import PluginProcess


def bench(plugin: PluginProcess, *args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kmsplug",
            "bench",
            "--socket",
            plugin.endpoint.url,
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_workloads_report_requests_latency_and_plugin_calls(plugin: PluginProcess) -> None:
    rows = bench(
        plugin,
        *("--workload", "v1-write", "--workload", "v1-read", "--workload", "v2-cold"),
        *("--concurrency", "4", "--duration", "1", "--max-requests", "300", "--stored", "100"),
        *("--cache-size", "50"),
    )
    by = {row["workload"]: row for row in rows}
    assert by["v1-write"]["requests"] == by["v1-write"]["plugin_calls"] == 300
    # 100 stored Secrets, a 50-entry cache: misses reach the plugin, hits do not
    assert 50 <= int(by["v1-read"]["plugin_calls"]) < 300  # type: ignore[call-overload]
    assert by["v2-cold"]["plugin_calls"] == 300
    for row in rows:
        assert row["errors"] == {}
        assert 0 < float(row["p50_ms"]) <= float(row["p99_ms"])  # type: ignore[arg-type]


def test_plots_are_written(plugin: PluginProcess, tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path))
    bench(
        plugin,
        *("--workload", "v2-status", "--concurrency", "1", "--concurrency", "4"),
        *("--duration", "0.5", "--max-requests", "200", "--plot-dir", str(out)),
    )
    for name in ("latency-cdf.png", "throughput.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_dek_cache_is_an_lru() -> None:
    cache = DekCache(2)
    cache.put(b"a", b"1")
    cache.put(b"b", b"2")
    assert cache.get(b"a") == b"1"
    cache.put(b"c", b"3")  # evicts b, the least recently used
    assert cache.get(b"b") is None and cache.get(b"a") == b"1"
