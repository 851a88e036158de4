"""PNG plots for `kmsplug bench --plot-dir`: a latency CDF and throughput vs concurrency.

matplotlib is an optional dependency (`pip install kmsplug[bench]`): the plugin itself
never imports it. The cluster benchmark (benches/cluster_report.py) draws with the same
helpers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kmsplug.bench.engine import Result
from kmsplug.extras import require


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files only, or MissingExtra naming the extra."""
    require("bench", "plots", ("matplotlib",))
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(
    path: Path, series: Iterable[tuple[str, Sequence[float]]], *, title: str, xlabel: str
) -> Path:
    """One CDF line per (label, latencies in ms), on a log time axis."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 5))
    for label, latencies in series:
        ordered = sorted(latencies)
        if ordered:
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            axes.plot(ordered, fractions, label=label)
    axes.set_xscale("log")
    axes.set_ylabel("fraction of calls")
    return save(figure, axes, path, title=title, xlabel=xlabel)


def save(figure: Any, axes: Any, path: Path, *, title: str, xlabel: str) -> Path:
    """Title, grid and legend, then write the PNG and free the figure."""
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    return path


def write_plots(results: Sequence[Result], directory: Path) -> list[Path]:
    written = [
        latency_cdf(
            directory / "latency-cdf.png",
            ((f"{r.workload} x{r.concurrency}", r.latencies_ms) for r in results),
            title="Latency CDF",
            xlabel="latency (ms, log scale)",
        )
    ]
    figure, axes = pyplot().subplots(figsize=(8, 5))
    for workload in dict.fromkeys(r.workload for r in results):
        runs = sorted((r for r in results if r.workload == workload), key=lambda r: r.concurrency)
        axes.plot([r.concurrency for r in runs], [r.rps for r in runs], marker="o", label=workload)
    axes.set_xscale("log", base=2)
    axes.set_ylabel("requests per second")
    written.append(
        save(
            figure,
            axes,
            directory / "throughput.png",
            title="Throughput vs concurrency",
            xlabel="calls in flight",
        )
    )
    return written
