"""Run the checks for the chosen API(s) within the time budget and collect the report."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from kmsplug.conformance.report import Outcome, Report
from kmsplug.conformance.rules import ALL
from kmsplug.conformance.session import OutOfTime, Session, Settings
from kmsplug.conformance.v1 import V1Checks
from kmsplug.conformance.v2 import V2Checks

Step = tuple[tuple[str, ...], Callable[[], Awaitable[None]]]
APIS = ("v2", "v1", "both")


async def run(settings: Settings) -> Report:
    if settings.api not in APIS:
        raise ValueError(f"api must be one of {APIS}, not {settings.api!r}")
    report = Report(settings.endpoint.url, settings.as_json())
    session = Session(settings)
    try:
        steps: list[Step] = []
        if settings.api in ("v2", "both"):
            steps += V2Checks(session, report).steps()
        if settings.api in ("v1", "both"):
            steps += V1Checks(session, report).steps()
        await _run_steps(report, steps)
    finally:
        await session.close()
    order = list(ALL)
    report.results.sort(key=lambda result: order.index(result.rule.id))
    return report


async def _run_steps(report: Report, steps: list[Step]) -> None:
    for index, (_, step) in enumerate(steps):
        try:
            await step()
        except OutOfTime:
            done = {result.rule.id for result in report.results}
            for rule_ids, _ in steps[index:]:
                for rule_id in rule_ids:
                    if rule_id not in done:
                        report.add(rule_id, Outcome.NOT_RUN, "time budget spent first")
            return
