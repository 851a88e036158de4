"""PNG plots for `kmsplug bench --plot-dir`: a latency CDF and throughput vs concurrency.

matplotlib is an optional dependency (`pip install kmsplug[bench]`): the plugin itself
never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kmsplug.bench import Result
from kmsplug.errors import ConfigError


def write_plots(results: Sequence[Result], directory: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: pip install 'kmsplug[bench]'") from exc
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    figure, axes = plt.subplots(figsize=(8, 5))
    for result in results:
        ordered = sorted(result.latencies_ms)
        if not ordered:
            continue
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.plot(ordered, fractions, label=f"{result.workload} x{result.concurrency}")
    axes.set_xscale("log")
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("fraction of calls")
    axes.set_title("Latency CDF")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    path = directory / "latency-cdf.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    written.append(path)

    figure, axes = plt.subplots(figsize=(8, 5))
    for workload in dict.fromkeys(r.workload for r in results):
        runs = sorted((r for r in results if r.workload == workload), key=lambda r: r.concurrency)
        axes.plot([r.concurrency for r in runs], [r.rps for r in runs], marker="o", label=workload)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("calls in flight")
    axes.set_ylabel("requests per second")
    axes.set_title("Throughput vs concurrency")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    path = directory / "throughput.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    written.append(path)
    return written
