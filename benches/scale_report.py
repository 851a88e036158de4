"""Turn scale_bench.py's results into markdown tables, target checks and PNG plots.

Ratios compare cases of the same invocation only. Re-render a report with
`python benches/scale_report.py bench-results/scale/scale.json`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = dict[str, Any]

COLUMNS: tuple[tuple[str, str, Callable[[Row], float | None]], ...] = (
    ("create/s", "create_per_s", lambda r: r["create_per_s"]),
    ("warm LIST s", "warm_list_s", lambda r: r["warm_list_ms"] / 1000),
    ("restart→ready s", "restart_ready_s", lambda r: r["restart_ready_s"]),
    ("cache fill s", "cache_fill_s", lambda r: r.get("cache_fill_s")),
    ("cold LIST s", "cold_list_s", lambda r: r["cold_list_ms"] / 1000),
    ("kmsplug RSS MiB", "kmsplug_rss_mib", lambda r: r.get("kmsplug_rss_mib")),
    ("kmsplug CPU s", "kmsplug_cpu_s", lambda r: r.get("kmsplug_cpu_s")),
    ("KMS calls create", "kms_calls_create", lambda r: r["kms_calls_create"]),
    ("KMS calls restart", "kms_calls_restart", lambda r: r["kms_calls_restart"]),
)
LOWER_IS_BETTER = ("warm_list_s", "restart_ready_s", "cache_fill_s", "cold_list_s")
V2_TARGET = 1.2
"""kmsplug v2 within 1.2x of aesgcm on every time figure."""
FLAT_RSS = 1.25
"""kmsplug's memory is flat: largest step at most 1.25x the smallest."""


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def by_case(results: Row) -> dict[str, dict[int, Row]]:
    return {
        case["case"]: {step["count"]: step for step in case["steps"]} for case in results["cases"]
    }


def figure(row: Row | None, key: str) -> float | None:
    if row is None:
        return None
    for _, name, get in COLUMNS:
        if name == key:
            value = get(row)
            return None if value is None else float(value)
    raise KeyError(key)


def render(results: Row) -> str:
    cases = by_case(results)
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        "# Scale benchmark",
        "",
        f"{machine['cpus']} CPUs ({machine['cpu']}), {machine['kube-apiserver']}, "
        f"{machine['etcd']}, {machine['date']}; {settings['clients']} writers, KMS answers "
        f"+{settings['kms_latency_ms']:g} ms, v1 cachesize {settings['v1_cachesize']}.",
        "",
        "## Per case and count",
        "",
        "| case | Secrets | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for case, steps in cases.items():
        for count, row in sorted(steps.items()):
            cells = [_fmt(get(row), 0 if "calls" in name else 2) for _, name, get in COLUMNS]
            lines.append(f"| {case} | {count:,} | " + " | ".join(cells) + " |")
    lines += ["", "## kmsplug against aesgcm (same run; >1 is slower)", ""]
    lines += ratio_table(cases)
    lines += ["", "## Targets", ""]
    lines += [f"- {line}" for line in targets(cases)]
    ha = results.get("ha")
    if ha:
        lines += [
            "",
            f"## Three nodes, {ha['count']:,} Secrets: cold start of the whole control plane",
            "",
            f"- all three apiservers ready after **{ha['all_ready_s']:.1f} s** "
            f"(each: {', '.join(f'{k} {v:.1f} s' for k, v in sorted(ha['ready_s'].items()))})",
            "- Secrets watch-cache fill per node: "
            + ", ".join(f"{k} {_fmt(v)} s" for k, v in sorted(ha["cache_fill_s"].items())),
            f"- remote KMS calls during the cold start: **{ha['kms_calls_cold_start']}** "
            f"(for {ha['count']:,} Secrets), listed back {ha['listed']:,}",
            "- kmsplug RSS per node after it: "
            + ", ".join(f"{_fmt(v)} MiB" for v in ha["kmsplug_rss_mib"]),
        ]
    return "\n".join(lines) + "\n"


def ratio_table(cases: dict[str, dict[int, Row]]) -> list[str]:
    base = cases.get("aesgcm", {})
    keys = ("create_per_s", *LOWER_IS_BETTER)
    lines = [
        "| case | Secrets | " + " | ".join(keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for case, steps in cases.items():
        if case == "aesgcm":
            continue
        for count, row in sorted(steps.items()):
            cells = []
            for key in keys:
                ours, floor = figure(row, key), figure(base.get(count), key)
                if ours is None or floor is None or not ours or not floor:
                    cells.append("-")
                elif key == "create_per_s":  # a rate: slower means fewer per second
                    cells.append(f"{floor / ours:.2f}x")
                else:
                    cells.append(f"{ours / floor:.2f}x")
            lines.append(f"| {case} | {count:,} | " + " | ".join(cells) + " |")
    return lines


def targets(cases: dict[str, dict[int, Row]]) -> list[str]:
    """The goals at the largest count measured (small counts are within timer noise)."""
    out = []
    base = cases.get("aesgcm", {})
    v2 = cases.get("kmsplug-v2", {})
    common = sorted(set(v2) & set(base))
    if common:
        count = common[-1]
        ratios = []
        for key in LOWER_IS_BETTER:
            ours, floor = figure(v2[count], key), figure(base[count], key)
            if ours and floor:
                ratios.append((ours / floor, key))
        if ratios:
            ratio, key = max(ratios)
            verdict = "met" if ratio <= V2_TARGET else "MISSED"
            out.append(
                f"v2 within {V2_TARGET}x of aesgcm at {count:,} Secrets: {verdict} "
                f"(worst {ratio:.2f}x, {key})"
            )
    for case in ("kmsplug-v2", "kmsplug-v1"):
        steps = cases.get(case, {})
        rss = [row.get("kmsplug_rss_mib") for _, row in sorted(steps.items())]
        rss = [value for value in rss if value]
        if len(rss) > 1:
            growth = max(rss) / min(rss)
            verdict = "flat" if growth <= FLAT_RSS else "NOT flat"
            out.append(
                f"{case} RSS {verdict}: {min(rss):.0f}-{max(rss):.0f} MiB ({growth:.2f}x) "
                f"from {min(steps):,} to {max(steps):,} Secrets"
            )
        out.extend(linearity(case, steps))
    return out


def linearity(case: str, steps: dict[int, Row]) -> list[str]:
    """Per-Secret cost at the largest count against the smallest: ~1 means linear."""
    if len(steps) < 2:
        return []
    small, large = steps[min(steps)], steps[max(steps)]
    parts = []
    for key in ("cache_fill_s", "cold_list_s", "kmsplug_cpu_s"):
        a, b = figure(small, key), figure(large, key)
        if a and b:
            parts.append(f"{key} {(b / max(steps)) / (a / min(steps)):.2f}")
    return [f"{case} per-Secret cost at {max(steps):,} vs {min(steps):,}: " + ", ".join(parts)]


def write_plots(results: Row, directory: Path) -> list[Path]:
    """One PNG per figure that should grow linearly (or stay flat) with the count."""
    from kmsplug.bench.plots import pyplot, save

    cases = by_case(results)
    written = []
    plots = (
        ("scale-cache-fill.png", "cache_fill_s", "watch-cache fill after a restart (s)"),
        ("scale-cold-list.png", "cold_list_s", "cold LIST, pages of 500 (s)"),
        ("scale-create.png", "create_per_s", "creates per second"),
        ("scale-kmsplug-rss.png", "kmsplug_rss_mib", "kmsplug RSS (MiB)"),
    )
    for filename, key, label in plots:
        figure_, axes = pyplot().subplots(figsize=(7, 4.5))
        for case, steps in cases.items():
            points = [(n, figure(row, key)) for n, row in sorted(steps.items())]
            points = [(n, v) for n, v in points if v is not None]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", label=case)
        axes.set_xscale("log")
        if key != "kmsplug_rss_mib":
            axes.set_yscale("log")
        axes.set_ylabel(label)
        written.append(
            save(figure_, axes, directory / filename, title=label, xlabel="Secrets (log scale)")
        )
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1])
    data = json.loads(source.read_text())
    print(render(data))
    for path in write_plots(data, source.parent):
        print(f"wrote {path}")
