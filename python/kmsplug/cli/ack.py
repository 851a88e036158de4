"""The drop-in for AliyunContainerService/ack-kms-plugin: its command (`ack-kms-plugin`)
and the flags of its command line that `serve` accepts (and mostly ignores)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import click

from kmsplug.cli import main

#: glog flags ack-kms-plugin accepted and kmsplug has no use for.
_GLOG_FLAGS = ("--logtostderr", "--alsologtostderr", "-logtostderr", "-alsologtostderr")


def ack_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """ack-kms-plugin's flags that are not kmsplug's own (its --key-id, --path-to-unix-socket
    and environment names are kmsplug's)."""
    command = click.option(
        "--gloglevel",
        type=int,
        default=None,
        hidden=True,
        help="ack-kms-plugin's verbosity: 0 info, 1+ debug.",
    )(command)
    return click.option(
        "--enable-kms-v1",
        is_flag=True,
        hidden=True,
        help="Accepted for ack-kms-plugin compatibility; v1 is served unless --disable-v1.",
    )(command)


def log_level(values: Mapping[str, Any]) -> str:
    """--log-level, unless ack-kms-plugin's --gloglevel says otherwise."""
    gloglevel: int | None = values["gloglevel"]
    if gloglevel is None:
        return str(values["log_level"])
    return "debug" if gloglevel > 0 else "info"


def ack_main() -> None:
    """`ack-kms-plugin`: the same command line as AliyunContainerService/ack-kms-plugin.

    `ack-kms-plugin [flags]` serves with the Alibaba provider; `ack-kms-plugin health
    [flags]` is the liveness check. Its static-pod manifest works with only the image
    changed.
    """
    args = [a for a in sys.argv[1:] if a.split("=", 1)[0] not in _GLOG_FLAGS]
    if args[:1] == ["health"]:
        main(["health", *args[1:]])
    else:
        main(["serve", "--provider", "alibaba", *args])
