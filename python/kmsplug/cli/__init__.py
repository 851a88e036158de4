"""The `kmsplug` command: serve, health, config, verify, migrate, key-agreement, bench,
conformance.

Every flag has an environment-variable twin (shown in --help) and a config-file key, so a
static-pod manifest can configure kmsplug either way (cli.settings). `ack-kms-plugin` is
the drop-in for ack-kms-plugin (cli.ack).
"""

from __future__ import annotations

import importlib
import sys

import click

from kmsplug import __version__
from kmsplug.errors import KmsplugError

#: Every subcommand: its name -> "module:attribute" of its click command. A new command is
#: one line here; its module is imported only when it runs or --help lists it.
COMMANDS = {
    "serve": "kmsplug.cli.serve:serve",
    "health": "kmsplug.cli.apiserver:health",
    "config": "kmsplug.cli.apiserver:config",
    "verify": "kmsplug.cli.cluster:verify",
    "migrate": "kmsplug.cli.cluster:migrate",
    "key-agreement": "kmsplug.cluster.agreement:key_agreement",
    "bench": "kmsplug.cli.bench:bench",
    "conformance": "kmsplug.conformance.command:conformance",
}


class _Commands(click.Group):
    """The commands of COMMANDS; a KmsplugError (a bad setting, a missing extra) ends a
    command with one line on stderr and exit code 1, not a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), target
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KmsplugError as exc:
            click.echo(f"kmsplug: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmsplug")
def main() -> None:
    """kmsplug: a Kubernetes KMS plugin (KMS v1beta1 and v2 on one socket)."""
