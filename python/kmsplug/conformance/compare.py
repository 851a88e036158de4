"""Saved JSON reports side by side: one column per plugin, one row per check (Markdown)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmsplug.conformance.rules import ALL


def _cell(check: dict[str, Any] | None) -> str:
    if check is None:
        return "n/a"  # not checked (e.g. an API the plugin was not run with)
    outcome = check["outcome"]
    figures = check.get("figures") or {}
    if outcome == "figure":
        if "calls_per_second" in figures:
            return f"{figures['calls_per_second']:.0f}/s"
        if "p99_ms" in figures:
            return f"p50 {figures['p50_ms']:.1f} / p99 {figures['p99_ms']:.1f} ms"
        return str(check["detail"])[:40].replace("|", "/")
    if outcome == "fail":
        return "**FAIL**"
    if outcome == "not run":
        return "**not run**"
    return str(outcome)


def load(paths: Sequence[Path]) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in paths]


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    labels = [str(r.get("label") or r["socket"]) for r in reports]
    by_id = [{c["id"]: c for c in r["checks"]} for r in reports]
    present = [rule_id for rule_id in ALL if any(rule_id in checks for checks in by_id)]
    lines = [
        "| check | kind | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for rule_id in present:
        kind = "required" if ALL[rule_id].required else "info"
        cells = [_cell(checks.get(rule_id)) for checks in by_id]
        lines.append(f"| `{rule_id}` | {kind} | " + " | ".join(cells) + " |")
    verdicts = ["**conforms**" if r["conforms"] else "**does not conform**" for r in reports]
    lines.append("| **verdict** | | " + " | ".join(verdicts) + " |")
    return "\n".join(lines)
