"""`kmsplug bench` against a real plugin: counts add up, the DEK cache spares calls.

A run ends at `--max-requests` or `--duration`, whichever comes first. Where a test
counts requests, the request cap ends the run and the duration is only the bound against
a hang (RUN_BOUND): on a loaded machine a second is not enough for a few hundred calls.
"""

from __future__ import annotations

import json
import subprocess
import sys

from plugin_process import PluginProcess

#: `--duration` where the request cap must end the run: a bound, never reached when well
#: (three workloads of one bench call still end within run_bench's 120 s timeout).
RUN_BOUND = "30"


def run_bench(plugin: PluginProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kmsplug", "bench", "--socket", plugin.endpoint.url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def bench(plugin: PluginProcess, *args: str) -> list[dict[str, object]]:
    result = run_bench(plugin, "--json", *args)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_workloads_report_requests_latency_and_plugin_calls(plugin: PluginProcess) -> None:
    rows = bench(
        plugin,
        *("--workload", "v1-write", "--workload", "v1-read", "--workload", "v2-cold"),
        *("--concurrency", "4", "--duration", RUN_BOUND, "--max-requests", "300"),
        *("--stored", "100"),
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


def test_the_dek_cache_holds_what_fits_and_can_be_off(plugin: PluginProcess) -> None:
    """The apiserver's v1 cache: with room for every stored Secret, each is decrypted at
    most once; with no cache, every read reaches the plugin."""
    cached, uncached = (
        bench(
            plugin,
            *("--workload", "v1-read", "--concurrency", "1", "--duration", "30"),
            *("--max-requests", "400", "--stored", "20", "--cache-size", size),
        )[0]
        for size in ("20", "0")
    )
    assert cached["requests"] == uncached["requests"] == 400
    assert 1 <= int(cached["plugin_calls"]) <= 20  # type: ignore[call-overload]
    assert uncached["plugin_calls"] == 400


def test_cold_start_reads_every_stored_secret_once(plugin: PluginProcess) -> None:
    (row,) = bench(
        plugin,
        *("--workload", "v1-cold", "--concurrency", "8", "--stored", "150"),
        *("--duration", "30", "--payload-size", "64"),
    )
    # bounded by the stored Secrets, not by the duration
    assert row["requests"] == row["plugin_calls"] == 150
    assert float(row["seconds"]) < 30  # type: ignore[arg-type]


def test_bursts_fire_concurrency_requests_at_once(plugin: PluginProcess) -> None:
    (row,) = bench(
        plugin,
        *("--workload", "v1-burst", "--concurrency", "25", "--duration", RUN_BOUND),
        *("--burst-interval", "0.2", "--max-requests", "100"),
    )
    assert row["requests"] == 100 and row["errors"] == {}
    # four bursts of 25 with 0.2 s pauses between them
    assert float(row["seconds"]) >= 0.6  # type: ignore[arg-type]


def test_remote_calls_come_from_the_plugins_metrics(plugin: PluginProcess) -> None:
    rows = bench(
        plugin,
        *("--workload", "v1-write", "--workload", "v2-cold", "--concurrency", "4"),
        *("--duration", RUN_BOUND, "--max-requests", "200", "--stored", "50"),
        *("--metrics-url", plugin.http_url + "/metrics"),
    )
    # the local key hierarchy answers every request: no remote KMS call at all
    assert [row["remote_calls"] for row in rows] == [0, 0]
    assert [row["requests"] for row in rows] == [200, 200]


def test_an_unreachable_metrics_url_is_a_usage_error(plugin: PluginProcess) -> None:
    result = run_bench(
        plugin,
        *("--workload", "v2-status", "--concurrency", "1", "--duration", "0.2"),
        *("--metrics-url", "http://127.0.0.1:9/metrics"),
    )
    assert result.returncode == 2
    assert "cannot read metrics from http://127.0.0.1:9/metrics" in result.stderr
    assert "Traceback" not in result.stderr


def test_v2_writes_call_the_plugin_only_for_a_new_key_id(plugin: PluginProcess) -> None:
    (row,) = bench(
        plugin,
        *("--workload", "v2-write", "--concurrency", "4", "--duration", RUN_BOUND),
        *("--max-requests", "2000", "--payload-size", "512"),
    )
    # one Status (the key_id), one Encrypt (the DEK seed), then every write sealed locally
    assert row["requests"] == 2000 and row["plugin_calls"] == 2 and row["errors"] == {}


def test_v2_writes_poll_status_on_the_interval(plugin: PluginProcess) -> None:
    (row,) = bench(
        plugin,
        *("--workload", "v2-write", "--concurrency", "1", "--duration", "1.05"),
        *("--status-interval", "0.25", "--max-requests", "1000000"),
    )
    # The key_id never changed: one Encrypt, the rest are Status polls. The next poll is
    # due an interval after the last one answered, so a loaded machine makes fewer (a
    # quiet one: 0, 0.25, 0.5, 0.75, 1.0 s); never more than one an interval, and the
    # first is not the last.
    polls = int(row["plugin_calls"]) - 1  # type: ignore[call-overload]
    assert 2 <= polls <= float(row["seconds"]) / 0.25 + 1  # type: ignore[arg-type]
