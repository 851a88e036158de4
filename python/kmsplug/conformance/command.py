"""The `kmsplug conformance` command (registered in the CLI by one add_command line)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from kmsplug.conformance.rules import (
    APISERVER_READS_IN_FLIGHT,
    APISERVER_TIMEOUT,
    APISERVER_WRITES_IN_FLIGHT,
    DEFAULT_BURST,
)
from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError


def _endpoint(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Endpoint | None:
    if value is None:
        return None
    try:
        return Endpoint.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option(
    "--socket",
    "endpoint",
    callback=_endpoint,
    help="The plugin under test: unix:///path or unix:///@abstract-name.",
)
@click.option(
    "--api",
    type=click.Choice(["v2", "v1", "both"]),
    default="v2",
    show_default=True,
    help="Which KMS API to check (v1beta1 is off by default since Kubernetes 1.29).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=APISERVER_TIMEOUT,
    show_default=True,
    help="Per-call deadline: the EncryptionConfiguration's `timeout`.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1, max=10_000),
    default=DEFAULT_BURST,
    show_default=True,
    help=f"Calls in flight at once: the apiserver's --max-requests-inflight "
    f"({APISERVER_READS_IN_FLIGHT}) + --max-mutating-requests-inflight "
    f"({APISERVER_WRITES_IN_FLIGHT}).",
)
@click.option(
    "--budget",
    type=click.FloatRange(min=5),
    default=45.0,
    show_default=True,
    help="Seconds for the whole run; checks that do not fit are reported as not run.",
)
@click.option(
    "--label", default="", help="A name for the plugin in the report (e.g. for --compare)."
)
@click.option("--rules", "list_rules", is_flag=True, help="List the rules and their sources.")
@click.option(
    "--compare",
    "compare_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Print saved --json reports side by side as a Markdown table (repeatable); "
    "nothing is run.",
)
def conformance(
    endpoint: Endpoint | None,
    api: str,
    as_json: bool,
    timeout: float,
    burst: int,
    budget: float,
    label: str,
    list_rules: bool,
    compare_files: tuple[Path, ...],
) -> None:
    """Check a KMS plugin against kube-apiserver's rules; exit 0 only if every required
    check passes. Works against any plugin's socket."""
    from kmsplug.conformance.report import rules_table
    from kmsplug.conformance.rules import ALL

    if list_rules:
        click.echo(rules_table(ALL.values()))
        return
    if compare_files:
        from kmsplug.conformance.compare import load, markdown

        try:
            click.echo(markdown(load(compare_files)))
        except (ValueError, KeyError) as exc:
            raise click.UsageError(f"not a conformance --json report: {exc}") from None
        return
    if endpoint is None:
        raise click.UsageError("--socket is required")
    from kmsplug.conformance.runner import run
    from kmsplug.conformance.session import Settings

    settings = Settings(endpoint, api=api, timeout=timeout, budget=budget, burst=burst)
    report = asyncio.run(run(settings))
    report.label = label
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        click.echo(report.table())
    sys.exit(0 if report.conforms else 1)
