"""`kmsplug bench`: load any KMS plugin socket the way kube-apiserver does (the bench
extra); the engine is kmsplug.bench."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import click

from kmsplug.bench.workloads import WORKLOADS
from kmsplug.cli.options import option, socket_option
from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError
from kmsplug.extras import require


@click.command()
@socket_option
@option(
    "--workload",
    "workloads",
    type=click.Choice(list(WORKLOADS)),
    multiple=True,
    default=("v1-write", "v2-cold"),
    help="What the apiserver does (repeatable): "
    + "; ".join(f"{name}: {model}" for name, model in WORKLOADS.items())
    + ".",
)
@option(
    "--concurrency",
    "concurrencies",
    type=click.IntRange(1, 4096),
    multiple=True,
    default=(1, 16, 64),
)
@option("--duration", type=click.FloatRange(0.1, 3600), default=5.0, help="Seconds per run.")
@option("--max-requests", type=click.IntRange(1), default=1_000_000, help="Cap per run.")
@option("--stored", type=click.IntRange(1, 1_000_000), default=2000, help="Secrets stored first.")
@option("--cache-size", type=int, default=1000, help="The apiserver's v1 DEK cache (cachesize).")
@option("--read-ratio", type=click.FloatRange(0, 1), default=0.9, help="mixed: share of reads.")
@option(
    "--payload-size",
    type=click.IntRange(1, 1024),
    default=32,
    help="Bytes of each DEK (v1) or DEK seed (v2) sent; the apiserver sends 32.",
)
@option(
    "--burst-interval",
    type=click.FloatRange(0, 60),
    default=0.5,
    help="v1-burst: seconds between bursts of --concurrency Encrypts.",
)
@option(
    "--status-interval",
    type=click.FloatRange(0.01, 3600),
    default=60.0,
    help="v2-write: seconds between the Status calls that check the key_id.",
)
@option(
    "--metrics-url",
    default=None,
    help="The plugin's Prometheus endpoint: report the remote KMS calls made in each run.",
)
@option(
    "--remote-metric",
    "remote_metrics",
    multiple=True,
    default=("kmsplug_remote_calls",),
    help="Counter(s) at --metrics-url that count remote KMS calls (summed over labels).",
)
@option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@option(
    "--plot-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write latency-cdf.png and throughput.png here (needs kmsplug[bench]).",
)
def bench(
    endpoint: Endpoint,
    workloads: tuple[str, ...],
    concurrencies: tuple[int, ...],
    duration: float,
    max_requests: int,
    stored: int,
    cache_size: int,
    read_ratio: float,
    payload_size: int,
    burst_interval: float,
    status_interval: float,
    metrics_url: str | None,
    remote_metrics: tuple[str, ...],
    as_json: bool,
    plot_dir: Path | None,
) -> None:
    """Load any KMS plugin socket the way kube-apiserver does; report req/s and latency."""
    import json

    require("bench", "kmsplug bench", ("tqdm", "cachetools"))
    if plot_dir is not None:
        require("bench", "kmsplug bench --plot-dir", ("matplotlib",))
    from tqdm import tqdm

    from kmsplug.bench.engine import Plan, RemoteCounter, run, table

    remote = RemoteCounter(metrics_url, remote_metrics) if metrics_url else None
    results = []
    for workload in workloads:
        for concurrency in concurrencies:
            plan = Plan(
                workload,
                concurrency,
                duration,
                max_requests=max_requests,
                stored=stored,
                cache_size=cache_size,
                read_ratio=read_ratio,
                payload_size=payload_size,
                burst_interval=burst_interval,
                status_interval=status_interval,
            )
            with tqdm(desc=f"{workload} x{concurrency}", unit="req", disable=as_json) as bar:
                try:
                    results.append(anyio.run(run, endpoint, plan, lambda n: bar.update(n), remote))
                except ConfigError as exc:
                    raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps([r.summary() for r in results], indent=2))
    else:
        click.echo(table(results))
    if plot_dir is not None:
        from kmsplug.bench.plots import write_plots

        try:
            for path in write_plots(results, plot_dir):
                click.echo(f"wrote {path}", err=as_json)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    sys.exit(1 if any(r.errors for r in results) else 0)
