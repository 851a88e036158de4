"""Check results and how they are shown: a table for people, JSON for tools."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kmsplug.conformance.rules import ALL, Rule


class Outcome(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    WARN = "warn"  # passes, with something the operator should know (e.g. v2beta1)
    FAIL = "fail"
    FIGURE = "figure"  # informative: a measured value, no verdict
    NOT_RUN = "not run"  # the time budget ran out first: unproven, so a required one fails


@dataclass(frozen=True, slots=True)
class Result:
    rule: Rule
    outcome: Outcome
    detail: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        """Does this result stop the plugin from conforming?"""
        return self.rule.required and self.outcome in (Outcome.FAIL, Outcome.NOT_RUN)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.rule.id,
            "title": self.rule.title,
            "required": self.rule.required,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "figures": self.figures,
            "rule": self.rule.rule,
            "source": self.rule.source,
        }


@dataclass
class Report:
    socket: str
    settings: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    label: str = ""

    def add(self, rule_id: str, outcome: Outcome, detail: str = "", **figures: float) -> Result:
        result = Result(ALL[rule_id], outcome, detail, figures)
        self.results.append(result)
        return result

    @property
    def conforms(self) -> bool:
        return not any(r.blocking for r in self.results)

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "socket": self.socket,
            "settings": self.settings,
            "conforms": self.conforms,
            "checks": [r.as_json() for r in self.results],
        }

    def table(self) -> str:
        rows = [("check", "kind", "result", "detail")]
        for r in self.results:
            kind = "required" if r.rule.required else "info"
            rows.append((r.rule.id, kind, r.outcome.value, r.detail))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
            for row in rows
        ]
        failed = [r.rule.id for r in self.results if r.blocking]
        verdict = (
            "conforms: every required check passed"
            if not failed
            else f"does NOT conform: {len(failed)} required check(s) failed: {', '.join(failed)}"
        )
        return "\n".join([*lines, "", verdict])


def rules_table(rules: Iterable[Rule]) -> str:
    """The catalogue (for --rules) as a Markdown table: id, kind, what, rule and source."""
    lines = ["| check | kind | what | rule | source |", "|---|---|---|---|---|"]
    for rule in rules:
        kind = "required" if rule.required else "info"
        cells = [f"`{rule.id}`", kind, rule.title, rule.rule, rule.source]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in (0, 1]); the max for small samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def latency_summary(samples: Sequence[float]) -> tuple[str, dict[str, float]]:
    """A short text and the numbers (in milliseconds) for a set of call durations."""
    p50, p99, top = (percentile(samples, 0.5), percentile(samples, 0.99), max(samples))
    text = f"n={len(samples)} p50 {ms(p50)} p99 {ms(p99)} max {ms(top)}"
    return text, {
        "n": float(len(samples)),
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": top * 1000,
    }
