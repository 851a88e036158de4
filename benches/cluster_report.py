"""Turn cluster_bench.py's results into markdown tables, target checks and PNG plots.

Figures are medians over rounds; ratios compare runs of the same invocation only.
`python benches/cluster_report.py bench-results/cluster/cluster.json` re-renders a report.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Row = dict[str, Any]
PHASES = ("create1", "create", "update", "get", "fill")


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def case_medians(results: Row) -> dict[tuple[str, float | None], Row]:
    """(case, delay_ms) -> median figures over rounds."""
    groups: dict[tuple[str, float | None], list[Row]] = {}
    for row in results["cases"]:
        groups.setdefault((row["case"], row["delay_ms"]), []).append(row)
    figures: dict[str, Callable[[Row], float]] = {
        "create1_p50": lambda r: r["create1"]["p50_ms"],
        "create1_p99": lambda r: r["create1"]["p99_ms"],
        "create_rps": lambda r: r["create"]["rps"],
        "create_p50": lambda r: r["create"]["p50_ms"],
        "create_p99": lambda r: r["create"]["p99_ms"],
        "update_p99": lambda r: r["update"]["p99_ms"],
        "get_p99": lambda r: r["get"]["p99_ms"],
        "warm_list_ms": lambda r: r["warm_list_ms"],
        "cold_list_s": lambda r: r["cold_list_ms"] / 1000,
        "restart_to_list_s": lambda r: r["restart_to_list_s"],
        "per_10k": lambda r: r["remote_calls_per_10k_writes"],
        "cold_calls": lambda r: r["remote_calls"].get("cold_start", 0),
        "stored": lambda r: r["cold_listed"],
        "errors": lambda r: sum(sum(r[p]["errors"].values()) for p in PHASES),
    }
    return {
        key: {name: _median(get(r) for r in rows) for name, get in figures.items()}
        | {"rounds": len(rows)}
        for key, rows in groups.items()
    }


def plugin_medians(results: Row) -> dict[tuple[str, int, str, float], Row]:
    """(workload, concurrency, plugin, delay_ms) -> median rps, p99, remote calls."""
    groups: dict[tuple[str, int, str, float], list[Row]] = {}
    for row in results["plugin"]:
        key = (row["workload"], row["concurrency"], row["plugin"], row["delay_ms"])
        groups.setdefault(key, []).append(row)
    return {
        key: {
            "rps": _median(r["rps"] for r in rows),
            "p99": _median(r["p99_ms"] for r in rows),
            "requests": _median(r["requests"] for r in rows),
            "remote": _median(r["remote_calls"] for r in rows),
            "errors": sum(sum(r["errors"].values()) for r in rows),
        }
        for key, rows in groups.items()
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    if b == 0:
        return "∞" if a else "-"
    return f"{a / b:.2f}x"


def render(results: Row) -> str:
    cases = case_medians(results)
    plugin = plugin_medians(results)
    floor = cases.get(("aesgcm", None), {}).get("create_p99")
    floor1 = cases.get(("aesgcm", None), {}).get("create1_p99")
    lines = ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in results["machine"].items()]
    s = results["settings"]
    lines += [
        "",
        f"Settings: {s['clients']} concurrent clients, phases of ≤{s['seconds']:g} s / "
        f"≤{s['writes']} requests, {s['secrets']} Secrets for the cold LIST, "
        f"{s['rounds']} round(s) in alternating order, KMS delays {s.get('delay_ms') or [5.0]} ms.",
        "",
        "## API server, per encryption provider",
        "",
        "Creates by 1 writer (x1) and by the concurrent clients (xN); p99 ratios against "
        "aesgcm, the floor. Cold LIST: the apiserver restarted, then one LIST of every Secret.",
        "",
        "| case | KMS delay | create x1 p50 / p99 ms | x1 p99 vs aesgcm | create xN req/s "
        "| create xN p50 / p99 ms | xN p99 vs aesgcm | update p99 ms | get p99 ms "
        "| cold LIST s | restart→LIST s | remote calls / 10k writes "
        "| remote calls at cold start | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (case, delay), m in cases.items():
        cells = [
            case,
            "-" if delay is None else f"{delay:g} ms",
            f"{_fmt(m['create1_p50'])} / {_fmt(m['create1_p99'])}",
            _ratio(m["create1_p99"], floor1),
            _fmt(m["create_rps"], 0),
            f"{_fmt(m['create_p50'])} / {_fmt(m['create_p99'])}",
            _ratio(m["create_p99"], floor),
            _fmt(m["update_p99"]),
            _fmt(m["get_p99"]),
            _fmt(m["cold_list_s"], 2),
            _fmt(m["restart_to_list_s"]),
            _fmt(m["per_10k"], 0),
            _fmt(m["cold_calls"], 0),
            _fmt(m["errors"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if plugin:
        lines += [
            "",
            "## Plugin sockets, kmsplug vs aws-encryption-provider (same emulated KMS)",
            "",
            "| workload | in flight | KMS delay | kmsplug req/s | peer req/s | kmsplug / peer "
            "| kmsplug p99 ms | peer p99 ms | remote calls kmsplug / peer |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        keys = sorted({(w, c, d) for (w, c, _, d) in plugin}, key=lambda k: (k[2], k[0], k[1]))
        for workload, concurrency, delay in keys:
            ours = plugin.get((workload, concurrency, "kmsplug", delay), {})
            peer = plugin.get((workload, concurrency, "peer", delay), {})
            lines.append(
                f"| {workload} | {concurrency} | {delay:g} ms | {_fmt(ours.get('rps'), 0)} "
                f"| {_fmt(peer.get('rps'), 0)} | {_ratio(ours.get('rps'), peer.get('rps'))} "
                f"| {_fmt(ours.get('p99'), 2)} | {_fmt(peer.get('p99'), 2)} "
                f"| {_fmt(ours.get('remote'), 0)} / {_fmt(peer.get('remote'), 0)} |"
            )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in targets(cases, plugin)]
    return "\n".join(lines) + "\n"


def targets(
    cases: dict[tuple[str, float | None], Row], plugin: dict[tuple[str, int, str, float], Row]
) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    aesgcm = cases.get(("aesgcm", None), {})
    delays = sorted({d for (_, d) in cases if d is not None})
    for delay in delays:
        tag = f"({delay:g} ms KMS)"
        for case, limit in (("kmsplug-v2", 1.2), ("kmsplug-v1", 1.5)):
            for figure, writers in (("create1_p99", "1 writer"), ("create_p99", "N writers")):
                p99, floor = cases.get((case, delay), {}).get(figure), aesgcm.get(figure)
                if p99 is not None and floor:
                    out.append(
                        (
                            f"{case} create p99 ≤ {limit}x aesgcm, {writers} {tag}",
                            f"{p99 / floor:.2f}x ({p99:.1f} vs {floor:.1f} ms)",
                            p99 / floor <= limit,
                        )
                    )
        ours, peer = cases.get(("kmsplug-v1", delay), {}), cases.get(("peer-v1", delay), {})
        if ours and peer:
            a, b = peer.get("restart_to_list_s"), ours.get("restart_to_list_s")
            if a and b:
                out.append(
                    (
                        f"cold LIST of {int(ours['stored'] or 0):,} v1 Secrets ≥ 10x faster "
                        f"than the peer (restart → LIST done) {tag}",
                        f"{a / b:.1f}x ({b:.1f} s vs {a:.1f} s)",
                        a / b >= 10,
                    )
                )
            ours_calls, peer_calls = ours.get("per_10k"), peer.get("per_10k")
            if ours_calls is not None and peer_calls is not None:
                ratio = peer_calls / ours_calls if ours_calls else float("inf")
                out.append(
                    (
                        f"remote KMS calls per 10,000 v1 writes ≥ 1,000x fewer than the peer {tag}",
                        f"{ours_calls:.0f} vs {peer_calls:.0f}"
                        + ("" if ours_calls else " (none at all)"),
                        ratio >= 1000,
                    )
                )
        for (workload, concurrency, name, d), row in sorted(plugin.items()):
            if name != "kmsplug" or workload != "v1-write" or d != delay:
                continue
            peer_row = plugin.get((workload, concurrency, "peer", d))
            if peer_row and peer_row["rps"]:
                ratio = row["rps"] / peer_row["rps"]
                out.append(
                    (
                        f"v1 Encrypt throughput ≥ 10x the peer's, {concurrency} in flight {tag}",
                        f"{ratio:.1f}x ({row['rps']:.0f} vs {peer_row['rps']:.0f} req/s)",
                        ratio >= 10,
                    )
                )
    return out


def write_plots(results: Row, directory: Path) -> list[Path]:
    """create-latency CDF per case, cold LIST bars, plugin throughput vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    delays = sorted({r["delay_ms"] for r in results["cases"] if r["delay_ms"] is not None})
    first = delays[0] if delays else None
    figure, axes = plt.subplots(figsize=(8, 5))
    for row in results["cases"]:
        if row["round"] != 0 or row["delay_ms"] not in (None, first):
            continue
        ordered = sorted(row["create1_latencies_ms"])
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.plot(ordered, fractions, label=row["case"])
    axes.set_xscale("log")
    axes.set_xlabel("Secret create latency, one writer (ms, log scale)")
    axes.set_ylabel("fraction of creates")
    title = f"kube-apiserver Secret creates (KMS delay {first:g} ms)" if first else "creates"
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    written.append(_save(figure, directory / "create-latency-cdf.png"))

    cases = case_medians(results)
    figure, axes = plt.subplots(figsize=(8, 5))
    labels = [f"{c}\n{'' if d is None else f'{d:g} ms'}" for (c, d) in cases]
    axes.bar(labels, [m["restart_to_list_s"] or 0 for m in cases.values()])
    axes.set_ylabel("seconds from apiserver restart to a full LIST")
    axes.set_title("Cold start: restart, then LIST every Secret")
    axes.tick_params(axis="x", labelsize="small")
    written.append(_save(figure, directory / "cold-list.png"))

    plugin = plugin_medians(results)
    if plugin:
        figure, axes = plt.subplots(figsize=(8, 5))
        for name in ("kmsplug", "peer"):
            for delay in sorted({k[3] for k in plugin}):
                runs = sorted(
                    (c, m["rps"])
                    for (w, c, n, d), m in plugin.items()
                    if w == "v1-write" and n == name and d == delay
                )
                if runs:
                    axes.plot(
                        *zip(*runs, strict=True), marker="o", label=f"{name}, {delay:g} ms KMS"
                    )
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("v1 Encrypts in flight")
        axes.set_ylabel("requests per second (log)")
        axes.set_title("Plugin throughput, v1 Encrypt")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
        written.append(_save(figure, directory / "plugin-throughput.png"))
    return written


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    print(render(data))
    for written_path in write_plots(data, Path(sys.argv[1]).parent):
        print(f"wrote {written_path}")
