"""What kube-apiserver and the kubelet are pointed at: `config` prints the
EncryptionConfiguration (or checks a `serve --config` file), `health` is the liveness
probe."""

from __future__ import annotations

import sys

import anyio
import click

from kmsplug.cli.options import option, socket_option
from kmsplug.cli.settings import check_settings
from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError


@click.command()
@socket_option
@option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    envvar="KMSPLUG_HEALTH_TIMEOUT",
    help="Seconds to wait for the plugin.",
)
def health(endpoint: Endpoint, timeout: float) -> None:
    """Exit 0 only if the plugin on the socket answers healthy (a liveness probe)."""
    from kmsplug.client import check_health

    try:
        healthy, detail = anyio.run(check_health, endpoint, timeout)
    except Exception as exc:  # any failure to ask is unhealthy
        healthy, detail = False, f"{type(exc).__name__}"
    click.echo(detail, err=not healthy)
    sys.exit(0 if healthy else 1)


@click.command()
@socket_option
@option(
    "--api",
    type=click.Choice(["v2", "v1", "both"]),
    default="v2",
    envvar="KMSPLUG_CONFIG_API",
    help="KMS API version of the provider entry (both: a v2 and a v1 provider).",
)
@option(
    "--name",
    default="kmsplug",
    envvar="KMSPLUG_PROVIDER_NAME",
    help="Provider name; it becomes part of every stored value's prefix.",
)
@option(
    "--timeout",
    default="3s",
    envvar="KMSPLUG_CONFIG_TIMEOUT",
    help="Per-call deadline the apiserver uses.",
)
@option(
    "--resource",
    "resources",
    multiple=True,
    default=("secrets",),
    help="Resources to encrypt (repeatable).",
)
@option("--cachesize", type=int, default=None, help="v1 only: the apiserver's DEK cache size.")
@option(
    "--check",
    "check_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Instead: validate a kmsplug settings file for `serve --config` and exit.",
)
@option(
    "--identity-fallback/--no-identity-fallback",
    default=True,
    help="List identity last, so data written before encryption stays readable.",
)
def config(
    endpoint: Endpoint,
    api: str,
    name: str,
    timeout: str,
    resources: tuple[str, ...],
    cachesize: int | None,
    check_file: str | None,
    identity_fallback: bool,
) -> None:
    """Print an EncryptionConfiguration for kube-apiserver that uses this plugin."""
    from kmsplug.encryption_config import encryption_configuration, to_yaml

    if check_file is not None:
        from kmsplug.cli.serve import serve
        from kmsplug.server import check_http_address

        settings = check_settings(serve, check_file)
        note = check_http_address(settings["http_address"])
        count = len([v for v in settings.values() if v not in (None, (), "")])
        click.echo(f"{check_file}: ok ({count} settings resolved)")
        if note:
            click.echo(note, err=True)
        return

    try:
        document = encryption_configuration(
            endpoint,
            api=api,
            name=name,
            timeout=timeout,
            resources=resources,
            cachesize=cachesize,
            identity_fallback=identity_fallback,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(to_yaml(document), nl=False)
