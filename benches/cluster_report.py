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
# kmsplug's case prefix -> the real peer's, on the same KMS behind the same proxy
PAIRS = (
    ("kmsplug", "peer", "aws-encryption-provider"),
    ("vault-kmsplug", "vault-peer", "vault-kubernetes-kms"),
)


def condition(row: Row) -> str | None:
    """The KMS a row ran against: "5 ms", "20 ms + 1000 QPS quota", None for no KMS."""
    if row.get("kms"):
        return str(row["kms"])
    return None if row.get("delay_ms") is None else f"{row['delay_ms']:g} ms"


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def case_medians(results: Row) -> dict[tuple[str, str | None], Row]:
    """(case, KMS condition) -> median figures over rounds."""
    groups: dict[tuple[str, str | None], list[Row]] = {}
    for row in results["cases"]:
        groups.setdefault((row["case"], condition(row)), []).append(row)
    figures: dict[str, Callable[[Row], float | None]] = {
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
        "cache_init_s": lambda r: r.get("cache_init_s"),
        "unpaged_s": lambda r: (
            None if r.get("unpaged_list_ms") is None else r["unpaged_list_ms"] / 1000
        ),
        "unpaged_failed": lambda r: 1 if r.get("unpaged_list_error") else 0,
        "errors": lambda r: sum(sum(r[p]["errors"].values()) for p in PHASES),
    }
    return {
        key: {name: _median(get(r) for r in rows) for name, get in figures.items()}
        | {"rounds": len(rows)}
        for key, rows in groups.items()
    }


def plugin_medians(results: Row) -> dict[tuple[str, int, str, str], Row]:
    """(workload, concurrency, plugin, KMS condition) -> median rps, p99, remote calls."""
    groups: dict[tuple[str, int, str, str], list[Row]] = {}
    for row in results["plugin"]:
        key = (row["workload"], row["concurrency"], row["plugin"], condition(row) or "")
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
        f"{s['rounds']} round(s) in alternating order, KMS delays {s.get('delay_ms') or [5.0]} ms"
        + (f", KMS quota {s['quota_qps']:g} QPS" if s.get("quota_qps") else "")
        + ".",
        "",
        "Peers (the real plugins, built from their pinned sources): "
        + ", ".join(f"{k} {v}" for k, v in results.get("peers", {}).items())
        + ".",
        "",
        "## API server, per encryption provider",
        "",
        "Creates by 1 writer (x1) and by the concurrent clients (xN); p99 ratios against "
        "aesgcm, the floor. After the writes the apiserver restarts: *watch cache fill* is "
        "its own log's time to load (and decrypt) every Secret; *cold LIST* is every Secret "
        "in pages of 500 as kubectl lists, right after the restart; *one-page LIST* is all of "
        "them in one request, which fails (504) past the apiserver's 60 s request timeout.",
        "",
        "| case | KMS | create x1 p50 / p99 ms | x1 p99 vs aesgcm | create xN req/s "
        "| create xN p50 / p99 ms | xN p99 vs aesgcm | update p99 ms | get p99 ms "
        "| watch cache fill s | cold LIST s | restart→LIST s | one-page LIST s "
        "| remote calls / 10k writes "
        "| remote calls at cold start | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (case, delay), m in cases.items():
        cells = [
            case,
            "-" if delay is None else delay,
            f"{_fmt(m['create1_p50'])} / {_fmt(m['create1_p99'])}",
            _ratio(m["create1_p99"], floor1),
            _fmt(m["create_rps"], 0),
            f"{_fmt(m['create_p50'])} / {_fmt(m['create_p99'])}",
            _ratio(m["create_p99"], floor),
            _fmt(m["update_p99"]),
            _fmt(m["get_p99"]),
            _fmt(m["cache_init_s"], 2),
            _fmt(m["cold_list_s"], 2),
            _fmt(m["restart_to_list_s"]),
            "504 (timeout)" if m["unpaged_failed"] else _fmt(m["unpaged_s"], 2),
            _fmt(m["per_10k"], 0),
            _fmt(m["cold_calls"], 0),
            _fmt(m["errors"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for ours_name, peer_name, peer_label in PAIRS:
        keys = sorted(
            {(w, c, d) for (w, c, n, d) in plugin if n == ours_name},
            key=lambda k: (k[2], k[0], k[1]),
        )
        if not keys:
            continue
        lines += [
            "",
            f"## Plugin sockets, kmsplug vs {peer_label} (`kmsplug bench` workloads, same KMS)",
            "",
            "| workload | in flight | KMS | kmsplug req/s | peer req/s | kmsplug / peer "
            "| kmsplug p99 ms | peer p99 ms | remote calls kmsplug / peer |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for workload, concurrency, delay in keys:
            ours = plugin.get((workload, concurrency, ours_name, delay), {})
            peer = plugin.get((workload, concurrency, peer_name, delay), {})
            lines.append(
                f"| {workload} | {concurrency} | {delay} | {_fmt(ours.get('rps'), 0)} "
                f"| {_fmt(peer.get('rps'), 0)} | {_ratio(ours.get('rps'), peer.get('rps'))} "
                f"| {_fmt(ours.get('p99'), 2)} | {_fmt(peer.get('p99'), 2)} "
                f"| {_fmt(ours.get('remote'), 0)} / {_fmt(peer.get('remote'), 0)} |"
            )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in targets(cases, plugin)]
    return "\n".join(lines) + "\n"


def _delay_of(condition: str) -> float:
    return float(condition.split(" ", 1)[0])


def targets(
    cases: dict[tuple[str, str | None], Row], plugin: dict[tuple[str, int, str, str], Row]
) -> list[tuple[str, str, bool]]:
    """The issue's targets, each against the same run's aesgcm or real peer."""
    out: list[tuple[str, str, bool]] = []
    aesgcm = cases.get(("aesgcm", None), {})
    conditions = sorted({d for (_, d) in cases if d is not None}, key=lambda d: (_delay_of(d), d))
    for kms in conditions:
        tag = f"({kms} KMS)"
        quota = "quota" in kms
        for case, limit in (
            ("kmsplug-v2", 1.1),
            ("kmsplug-v1", 1.5),
            ("vault-kmsplug-v2", 1.1),
            ("vault-kmsplug-v1", 1.5),
        ):
            for figure, writers in (("create1_p99", "1 writer"), ("create_p99", "N writers")):
                p99, floor = cases.get((case, kms), {}).get(figure), aesgcm.get(figure)
                if p99 is not None and floor:
                    out.append(
                        (
                            f"{case} create p99 ≤ {limit}x aesgcm, {writers} {tag}",
                            f"{p99 / floor:.2f}x ({p99:.1f} vs {floor:.1f} ms)",
                            p99 / floor <= limit,
                        )
                    )
        for ours_name, peer_name, peer_label in PAIRS:
            ours2, peer2 = (
                cases.get((f"{ours_name}-v2", kms), {}),
                cases.get((f"{peer_name}-v2", kms), {}),
            )
            for figure, writers in (("create1_p99", "1 writer"), ("create_p99", "N writers")):
                a, b = ours2.get(figure), peer2.get(figure)
                if a is not None and b:
                    out.append(
                        (
                            f"{ours_name}-v2 create p99 never worse than {peer_label} v2, "
                            f"{writers} {tag}",
                            f"{a / b:.2f}x ({a:.1f} vs {b:.1f} ms)",
                            a <= b,
                        )
                    )
            ours, peer = (
                cases.get((f"{ours_name}-v1", kms), {}),
                cases.get((f"{peer_name}-v1", kms), {}),
            )
            if not (ours and peer):
                continue
            need = 10 if quota or _delay_of(kms) >= 20 else 5
            for figure, what in (
                ("restart_to_list_s", "restart to full LIST"),
                ("cold_list_s", "LIST"),
                ("cache_init_s", "watch cache fill"),
            ):
                a, b = peer.get(figure), ours.get(figure)
                if a and b:
                    out.append(
                        (
                            f"cold {what} of {int(ours['stored'] or 0):,} v1 Secrets ≥ {need}x "
                            f"faster than {peer_label} {tag}",
                            f"{a / b:.1f}x ({b:.2f} s vs {a:.2f} s)",
                            a / b >= need,
                        )
                    )
            ours_calls, peer_calls = ours.get("per_10k"), peer.get("per_10k")
            if ours_calls is not None and peer_calls is not None:
                ratio = peer_calls / ours_calls if ours_calls else float("inf")
                out.append(
                    (
                        f"remote KMS calls per 10,000 v1 writes ≥ 1,000x fewer than "
                        f"{peer_label} {tag}",
                        f"{ours_calls:.0f} vs {peer_calls:.0f}"
                        + ("" if ours_calls else " (none at all)"),
                        ratio >= 1000,
                    )
                )
            for (workload, concurrency, name, d), row in sorted(plugin.items()):
                if name != ours_name or workload != "v1-write" or d != kms:
                    continue
                peer_row = plugin.get((workload, concurrency, peer_name, d))
                if peer_row and peer_row["rps"]:
                    ratio = row["rps"] / peer_row["rps"]
                    out.append(
                        (
                            f"v1 Encrypt throughput ≥ 10x {peer_label}'s, "
                            f"{concurrency} in flight {tag}",
                            f"{ratio:.1f}x ({row['rps']:.0f} vs {peer_row['rps']:.0f} req/s)",
                            ratio >= 10,
                        )
                    )
    return out


def write_plots(results: Row, directory: Path) -> list[Path]:
    """create-latency CDF per case, cold LIST bars, plugin throughput vs concurrency."""
    from kmsplug.bench.plots import latency_cdf, pyplot, save

    kms = sorted(
        {condition(r) for r in results["cases"] if condition(r) is not None},
        key=lambda d: (_delay_of(d), d),  # type: ignore[arg-type]
    )
    first = kms[0] if kms else None
    shown = [r for r in results["cases"] if r["round"] == 0 and condition(r) in (None, first)]
    written = [
        latency_cdf(
            directory / "create-latency-cdf.png",
            ((r["case"], r["create1_latencies_ms"]) for r in shown),
            title="kube-apiserver Secret creates"
            + (f" (KMS {first})" if first is not None else ""),
            xlabel="Secret create latency, one writer (ms, log scale)",
        )
    ]

    plt = pyplot()
    cases = case_medians(results)
    figure, axes = plt.subplots(figsize=(11, 5))
    labels = [f"{c}\n{'' if d is None else f'{d} KMS'}" for (c, d) in cases]
    axes.bar(labels, [m["restart_to_list_s"] or 0 for m in cases.values()])
    axes.set_ylabel("seconds from apiserver restart to a full LIST")
    axes.tick_params(axis="x", labelsize="small", labelrotation=30)
    title = "Cold start: restart, then LIST every Secret"
    written.append(save(figure, axes, directory / "cold-list.png", title=title, xlabel=""))

    plugin = plugin_medians(results)
    if plugin:
        figure, axes = plt.subplots(figsize=(8, 5))
        for name in sorted({k[2] for k in plugin}):
            for delay in sorted({k[3] for k in plugin}):
                runs = sorted(
                    (c, m["rps"])
                    for (w, c, n, d), m in plugin.items()
                    if w == "v1-write" and n == name and d == delay
                )
                if runs:
                    label = f"{name}, {delay} KMS"
                    axes.plot(*zip(*runs, strict=True), marker="o", label=label)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_ylabel("requests per second (log)")
        written.append(
            save(
                figure,
                axes,
                directory / "plugin-throughput.png",
                title="Plugin throughput, v1 Encrypt",
                xlabel="v1 Encrypts in flight",
            )
        )
    return written


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    print(render(data))
    for written_path in write_plots(data, Path(sys.argv[1]).parent):
        print(f"wrote {written_path}")
