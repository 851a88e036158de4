"""What the commands' options share: how an option shows itself, the socket option, and
defaults taken from the settings objects they fill (so a default is written once)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import click

from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError

#: The socket kube-apiserver's EncryptionConfiguration names unless told otherwise.
DEFAULT_SOCKET = "unix:///var/run/kmsplugin/socket.sock"

#: Every option shows its default and its environment twin in --help.
option = functools.partial(click.option, show_default=True, show_envvar=True)


def default_of(settings: type[Any], name: str) -> Any:
    """The default of field `name` of the dataclass `settings`."""
    (field,) = (f for f in dataclasses.fields(settings) if f.name == name)
    if field.default is dataclasses.MISSING:
        raise LookupError(f"{settings.__name__}.{name} has no default")
    return field.default


def _endpoint(_ctx: click.Context, _param: click.Parameter, value: str) -> Endpoint:
    try:
        return Endpoint.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def octal(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    """A file mode written in octal (`0600`)."""
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal file mode") from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{value!r} is not a file mode")
    return mode


socket_option = option(
    "--socket",
    "--path-to-unix-socket",  # ack-kms-plugin's name, so its manifests work unchanged
    "endpoint",
    default=DEFAULT_SOCKET,
    envvar="KMSPLUG_SOCKET",
    callback=_endpoint,
    help="unix:///path or unix:///@abstract-name (a bare /path works too).",
)
