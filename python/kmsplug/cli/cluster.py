"""Cluster tools: `verify` reads how etcd stores objects, `migrate` rewrites them through
the apiserver so they are stored with the current provider and key_id (the cluster
extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kmsplug.cli.options import option
from kmsplug.cluster.agreement import requires_key_agreement
from kmsplug.extras import require


@click.command()
@option(
    "--etcd",
    "etcd_url",
    required=True,
    envvar="KMSPLUG_ETCD",
    help="etcd client URL, e.g. http://127.0.0.1:2379 (read-only use).",
)
@option("--prefix", default="/registry", show_default=True, help="kube-apiserver etcd prefix.")
@option(
    "--resource",
    "resources",
    multiple=True,
    default=("secrets",),
    help="Resources to check, named as in an EncryptionConfiguration: secrets, configmaps, "
    "deployments.apps, widgets.example.com (repeatable).",
)
@option(
    "--expect",
    "kinds",
    multiple=True,
    default=("kms-v2", "kms-v1"),
    type=click.Choice(["kms-v2", "kms-v1", "aesgcm", "aescbc", "secretbox", "identity"]),
    help="Storage every value must have (repeatable).",
)
@option("--expect-provider", default="", help="Provider name every value must carry.")
@option("--expect-key-id", default="", help="KMS key_id every value must carry.")
@option("--cacert", type=click.Path(exists=True, dir_okay=False), default=None)
@option("--cert", type=click.Path(exists=True, dir_okay=False), default=None)
@option("--key", type=click.Path(exists=True, dir_okay=False), default=None)
@option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(
    etcd_url: str,
    prefix: str,
    resources: tuple[str, ...],
    kinds: tuple[str, ...],
    expect_provider: str,
    expect_key_id: str,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Report how stored objects are encrypted; exit 1 if any is not as expected."""
    import json

    from kmsplug.cluster.etcd import EtcdReader, EtcdTls
    from kmsplug.cluster.verify import Expectation, verify_etcd

    reader = EtcdReader(etcd_url, tls=EtcdTls(cacert, cert, key))
    expect = Expectation(kinds, expect_provider, expect_key_id)
    try:
        report = verify_etcd(reader, prefix=prefix, resources=resources, expect=expect)
    except OSError as exc:
        hint = ""
        if getattr(exc, "code", None) == 503:
            hint = (
                " (etcd's JSON gateway could not reach etcd: e.g. no leader, or client "
                "certificates required and etcd's server certificate does not allow client auth)"
            )
        click.echo(f"kmsplug: cannot read etcd at {etcd_url}: {exc}{hint}", err=True)
        sys.exit(2)
    if as_json:
        document = {
            "ok": report.ok,
            "total": report.total,
            "stored": report.rows(),
            "empty": report.empty,
            "unexpected": [
                {"key": k, "kind": s.kind, "provider": s.provider, "key_id": s.key_id}
                for k, s in report.unexpected
            ],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(report.table())
        for k, s in report.unexpected[:20]:
            click.echo(f"  unexpected: {k} stored as {s.kind} {s.provider} {s.key_id}".rstrip())
    sys.exit(0 if report.ok else 1)


@click.command()
@option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="KUBECONFIG",
    help="kubeconfig of a user allowed to get, list and update the resources.",
)
@option(
    "--resource",
    "resources",
    multiple=True,
    default=("secrets",),
    help="secrets, configmaps or <plural>.<group> (repeatable).",
)
@option("--page-size", type=click.IntRange(1, 5000), default=500, show_default=True)
@option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where progress is saved; a second run with the same file resumes.",
)
@option("--dry-run", is_flag=True, help="Send every write as a server-side dry run.")
@requires_key_agreement
def migrate(
    kubeconfig: str | None,
    resources: tuple[str, ...],
    page_size: int,
    state_file: Path | None,
    dry_run: bool,
) -> None:
    """Rewrite objects so they are stored with the current provider and key_id."""
    require("cluster", "kmsplug migrate")
    from tqdm import tqdm

    from kmsplug.cluster.migrate import MigrationState, Migrator

    bars: dict[str, tqdm] = {}  # type: ignore[type-arg]

    def progress(resource: str, done: int, total: int | None) -> None:
        bar = bars.setdefault(resource, tqdm(desc=resource, unit="obj", total=total, leave=True))
        bar.total = total
        bar.n = done
        bar.refresh()

    state = MigrationState.load(state_file)
    migrator = Migrator(
        kubeconfig, page_size=page_size, dry_run=dry_run, state=state, on_progress=progress
    )
    failed = False
    for resource in resources:
        try:
            result = migrator.migrate(resource)
        except Exception as exc:  # report and go on with the next resource
            failed = True
            click.echo(f"{resource}: failed: {type(exc).__name__}: {exc}", err=True)
            continue
        finally:
            if resource in bars:
                bars[resource].close()
        verb = "would rewrite" if dry_run else "rewrote"
        click.echo(
            f"{resource}: {verb} {result.rewritten}, resumed past {result.skipped}, "
            f"deleted meanwhile {result.gone}, conflicts retried {result.conflicts}"
        )
    sys.exit(1 if failed else 0)
