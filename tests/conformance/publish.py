"""Regenerate CONFORMANCE.md's results: every plugin, one after another, as a user runs it.

    .venv/bin/python tests/conformance/publish.py            # run all, print the section
    .venv/bin/python tests/conformance/publish.py --write    # ... and put it in CONFORMANCE.md
    .venv/bin/python tests/conformance/publish.py --only ack-kms-plugin --only kmsplug-aws-direct
    .venv/bin/python tests/conformance/publish.py --from DIR --write   # reuse saved reports
    .venv/bin/python tests/conformance/publish.py --only kmsplug-aws-direct --write
        # re-run one column; the others are the reports saved in --out by earlier runs

(`make conformance-table` is the first with --write.) Each plugin in
plugins_under_test.py is started on a fresh KMS and checked by the real command, in its
own process, with the defaults (3 s deadline, 600-call burst, 45 s budget):
`kmsplug conformance --socket ... --api both|v1 --json --label ...`. Its report is saved
(`--out`, default .run/conformance/) with the load average just before and after it and
the KMS it ran on. The tables are the saved reports side by side, made by the same
function as `kmsplug conformance --compare`, plus a row with each run's load average;
the rules table is `kmsplug conformance --rules`. Only the parts of CONFORMANCE.md
between the `generated` markers are replaced: the prose around them is the team's.

It lives here, beside the tests, because it starts the plugins with the tests' helpers
(the peers' runners, local-kms, OpenBao, the Alibaba fake, SoftHSM) and the peers' test
asserts what it publishes; it is not a benchmark (benches/ measures speed; this says
which rules hold).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # run as a script: the tests' helpers

from plugins_under_test import ALL, REPO, Plugin, Unavailable, kmsplug_commit, running  # noqa: E402
from run_helpers import conformance  # noqa: E402

from kmsplug.conformance.compare import markdown  # noqa: E402
from kmsplug.conformance.report import rules_table  # noqa: E402
from kmsplug.conformance.rules import ALL as RULES  # noqa: E402

DOC = REPO / "CONFORMANCE.md"
COMMAND = "python tests/conformance/publish.py --write"
#: The two tables: the peers next to kmsplug on the same KMS; kmsplug's other providers.
PEER_TABLE = (
    "aws-encryption-provider",
    "kmsplug-aws-hierarchy",
    "kmsplug-aws-direct",
    "vault-kubernetes-kms",
    "kmsplug-vault-hierarchy",
    "kmsplug-vault-direct",
    "ack-kms-plugin",
    "ack-kms-plugin-v2",
    "kmsplug-alibaba-hierarchy",
    "kmsplug-alibaba-direct",
)
OWN_TABLE = (
    "kmsplug-local-hierarchy",
    "kmsplug-local-direct",
    "kmsplug-pkcs11-hierarchy",
    "kmsplug-pkcs11-direct",
)
LOAD_ROW = "run at (UTC): load average, 1 min (before → after)"


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def run_one(plugin: Plugin, commit: str, workdir: Path) -> dict[str, Any]:
    """Start `plugin`, run the conformance command at it, return its report (enriched)."""
    with running(plugin, workdir) as (daemon, kms):
        before = load_average()
        label = plugin.label(commit)
        run = conformance(daemon.endpoint, "--api", plugin.api, "--label", label, timeout=600)
        after = load_average()
        # what it was started with: the env's names only (values are secrets or paths)
        env_names = sorted(set(daemon.env) - {"PATH", "HOME"}) if plugin.peer else sorted(kms.env)
        started_as = _shown_argv(daemon.argv, workdir)
    text = json.dumps(run.report)
    if any(
        secret and secret in text for secret in kms.secrets
    ):  # never publish a secret; this is also a bug in the plugin or the suite
        raise RuntimeError(f"{plugin.name}: the report carries one of its KMS's secrets")
    report = dict(run.report)
    report["publish"] = {
        "plugin": plugin.name,
        "kmsplug": commit,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "exit_code": run.code,
        "seconds": round(run.seconds, 1),
        "load_average_before": before,
        "load_average_after": after,
        "kms": kms.version,
        "started_as": started_as,
        "environment_names": env_names,
    }
    return report


#: What changes from run to run in a command line, and how the table shows it.
_RUN_SPECIFIC = (
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"arn:aws:kms:[^ ]+"), "<key ARN>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<key id>"),
)


def _shown_argv(argv: Sequence[str], workdir: Path) -> str:
    """The plugin's command line as published: the temporary directory as $W, a built
    peer by its name, ports and key ids (new each run) by what they are."""
    cache = str(Path.home() / ".cache")
    shown = []
    for arg in argv:
        if arg == sys.executable:
            arg = "python"
        elif arg.startswith(cache):
            arg = Path(arg).name
        shown.append(arg.replace(str(workdir), "$W"))
    text = " ".join(shown)
    for pattern, replacement in _RUN_SPECIFIC:
        text = pattern.sub(replacement, text)
    return text


def run_all(names: Iterable[str], out: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Run each plugin in turn; saved reports by name, and why the others did not run."""
    commit = kmsplug_commit()
    out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for name in names:
        print(f"{name}: starting", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="cf-", dir="/tmp") as workdir:
            try:
                report = run_one(ALL[name], commit, Path(workdir))
            except Unavailable as exc:
                missing[name] = str(exc)
                print(f"{name}: not available: {exc}", file=sys.stderr, flush=True)
                continue
        (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        reports[name] = report
        failing = [c["id"] for c in report["checks"] if c["outcome"] in ("fail", "not run")]
        print(f"{name}: {len(failing)} failing: {', '.join(failing)}", file=sys.stderr)
    return reports, missing


def load_saved(out: Path) -> dict[str, dict[str, Any]]:
    reports = {}
    for name in ALL:
        path = out / f"{name}.json"
        if path.exists():
            reports[name] = json.loads(path.read_text())
    return reports


# -- the generated Markdown ----------------------------------------------------------------


def table(reports: Sequence[dict[str, Any]]) -> str:
    """`kmsplug conformance --compare`'s table, with each run's load average above the
    verdict."""
    lines = markdown(reports).splitlines()

    def load(report: dict[str, Any]) -> str:
        run = report.get("publish", {})
        if "load_average_before" not in run:
            return "?"
        at = str(run.get("date", "?")).split()[-2]  # "2026-11-29 22:37 UTC": the time
        before, after = run["load_average_before"][0], run["load_average_after"][0]
        return f"{at}: {before:.1f} → {after:.1f}"

    row = f"| {LOAD_ROW} | | " + " | ".join(load(r) for r in reports) + " |"
    return "\n".join([*lines[:-1], row, lines[-1]])


def results_section(reports: dict[str, dict[str, Any]], missing: dict[str, str]) -> str:
    import grpc

    runs = [r["publish"] for r in reports.values() if "publish" in r]
    loads = [
        load for run in runs for load in (run["load_average_before"], run["load_average_after"])
    ]
    kms_versions = sorted({f"{ALL[run['plugin']].kms}: {run['kms']}" for run in runs})
    settings = next(iter(reports.values()))["settings"] if reports else {}
    commit = ", ".join(sorted({str(run.get("kmsplug", "?")) for run in runs}))
    dates = sorted(str(run.get("date", "?")) for run in runs)
    when = f"{dates[0]} to {dates[-1]}" if dates else "?"
    timeout, burst, budget = (settings.get(k, "?") for k in ("timeout", "burst", "budget"))
    prose = (
        f"Produced by `{COMMAND}` from {when}, kmsplug at {commit}. Each plugin ran on a "
        "fresh KMS, one after another, checked with the defaults (timeout "
        f"{timeout} s, burst {burst}, budget {budget} s) by `kmsplug conformance --socket "
        "<its socket> --api both --json --label <column>` (`--api v1` for the v1beta1-only "
        f"plugin). Machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, grpcio {grpc.__version__} (the suite's client)."
    )
    if loads:
        ones = [load[0] for load in loads]
        prose += (
            f" Load average (1 min) during the runs: {min(ones):.1f} to {max(ones):.1f}; "
            "each column's, just before and after its run, is the last row of its table, "
            "with the time of the run."
        )
    lines = [textwrap.fill(prose, width=88, break_on_hyphens=False), "", "KMSes:"]
    lines += [f"- {version}" for version in kms_versions]
    if missing:
        lines += ["", "Not run here (their columns are missing):"]
        lines += [f"- {name}: {why}" for name, why in missing.items()]
    lines += ["", "How each plugin was started (`$W` is its temporary directory):", "", "```"]
    for report in reports.values():
        run = report.get("publish", {})
        if run:
            env = ", ".join(run["environment_names"])
            lines.append(f"# {report['label']}" + (f"; environment: {env}" if env else ""))
            lines.append(run["started_as"])
    lines.append("```")
    for title, names in (
        ("The peers next to kmsplug on the same KMS", PEER_TABLE),
        ("kmsplug with the providers that have no peer here", OWN_TABLE),
    ):
        chosen = [reports[name] for name in names if name in reports]
        if chosen:
            lines += ["", f"### {title}", "", table(chosen)]
    return "\n".join(lines)


def marker(part: str, end: bool = False) -> str:
    if end:
        return f"<!-- end of the generated {part} -->"
    return f"<!-- generated {part}: `{COMMAND}` rewrites it; edit the prose outside -->"


def replace_part(doc: str, part: str, body: str) -> str:
    start, end = marker(part), marker(part, end=True)
    if doc.count(start) != 1 or doc.count(end) != 1:
        raise SystemExit(f"{DOC.name}: expected one pair of '{part}' markers")
    head, rest = doc.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n\n{body}\n\n{end}{tail}"


def read_published(doc: str | None = None) -> dict[str, dict[str, str]]:
    """The published results: {column label: {check id or LOAD_ROW: cell}}."""
    text = doc if doc is not None else DOC.read_text()
    start, end = marker("results"), marker("results", end=True)
    if start not in text:
        return {}
    section = text.split(start)[1].split(end)[0]
    columns: dict[str, dict[str, str]] = {}
    labels: list[str] = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or set(cells[0]) <= {"-"}:
            continue
        if cells[:2] == ["check", "kind"]:
            labels = cells[2:]
            for label in labels:
                columns.setdefault(label, {})
            continue
        row = cells[0].strip("`")
        for label, cell in zip(labels, cells[2:], strict=True):
            columns[label][row] = cell
    return columns


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOC.name}'s results")
    parser.add_argument(
        "--only", action="append", choices=sorted(ALL), help="run only these (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / ".run" / "conformance", help="where reports go"
    )
    parser.add_argument(
        "--from", dest="saved", type=Path, help="run nothing: use the reports saved in DIR"
    )
    args = parser.parse_args(argv)
    missing: dict[str, str] = {}
    if args.saved:
        reports = load_saved(args.saved)
    else:
        names = [name for name in (*PEER_TABLE, *OWN_TABLE) if not args.only or name in args.only]
        reports, missing = run_all(names, args.out)
        if args.only and args.write:  # re-run some columns: the others from the last runs
            reports = load_saved(args.out)
    if not reports:
        print("no report to publish", file=sys.stderr)
        return 1
    section = results_section(reports, missing)
    rules = rules_table(RULES.values())
    if not args.write:
        print(section)
        return 0
    doc = replace_part(DOC.read_text(), "rules", rules)
    DOC.write_text(replace_part(doc, "results", section))
    print(f"{DOC} rewritten ({len(reports)} plugins)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
