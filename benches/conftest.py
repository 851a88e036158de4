"""Print each benchmark group's ratio against its baseline (a name containing 'baseline')."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list[Any]] = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group or bench.name, []).append(bench)
    terminalreporter.section("ratios against the baseline of each group (median time)")
    for group, benches in groups.items():
        baseline = next((b for b in benches if "baseline" in b.name), None)
        if baseline is None:
            continue
        base = baseline.stats.median
        for bench in benches:
            if bench is baseline:
                continue
            terminalreporter.write_line(
                f"{group}: {bench.name} {bench.stats.median * 1e6:.3f} us vs "
                f"{baseline.name} {base * 1e6:.3f} us -> {bench.stats.median / base:.2f}x time"
            )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
