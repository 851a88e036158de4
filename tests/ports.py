"""Loopback ports for the servers tests start.

Servers that report the port they bound (kmsplug with `--http-address 127.0.0.1:0`, the
tests' own Python servers) bind port 0 and the test reads the port back: no race.
Servers that cannot (etcd, kube-apiserver, OpenBao, aws-encryption-provider's health
port) get a port picked free here, and another process can take it before they bind it.
Their starters raise PortTaken when the server says so, and `retry_port_clash` starts
them again on a new port.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ATTEMPTS = 5


class PortTaken(RuntimeError):
    """A server could not bind the port picked for it: another process took it first."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later: see above)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_taken(log_text: str) -> bool:
    """Whether a server's output says its listen address was in use (Go and C servers)."""
    return "address already in use" in log_text.lower()


def retry_port_clash(
    start: Callable[[], T], repick: Callable[[], None], attempts: int = ATTEMPTS
) -> T:
    """`start()`; when it raises PortTaken, `repick()` new ports and start again."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except PortTaken:
            if attempt == attempts:
                raise
            repick()
    raise AssertionError("unreachable")
