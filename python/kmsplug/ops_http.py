"""The operator's HTTP endpoint, on localhost: /metrics, /healthz, /livez, /readyz.

- /livez: the process can serve (its event loop answers and the gRPC server runs). It
  never fails because the KMS throttles or a caller sent garbage: a restart would not help.
- /readyz: serving, with a usable write key, and not draining for shutdown.
- /healthz: deep: the background prober's last verdict on the write KEK (reachable, wrap
  and unwrap permitted), from cache: a scrape never costs a KMS call.

Anyone who can reach the port can connect, so the endpoint must not be a way to starve
the gRPC socket of file descriptors (aiohttp itself has no header timeout and no
connection cap):
- a connection lives at most CONNECTION_SECONDS: a request sent slowly, or never
  finished, is dropped then (a scrape takes milliseconds; Prometheus reconnects);
- at most `max_connections` at once (64, fewer when the descriptor limit is low, so
  that most descriptors stay free for the gRPC socket); more are closed on accept;
- the soft descriptor limit is raised to the hard one at start-up;
- responses name no library versions (Server: kmsplug), and a warning is logged when
  the endpoint listens beyond loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import resource
import socket
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kmsplug.metrics import Metrics
from kmsplug.service import KeyService

log = logging.getLogger(__name__)

CONNECTION_SECONDS = 5.0
MAX_CONNECTIONS = 64
SERVER_HEADER = "kmsplug"


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_budget(soft_limit: int) -> int:
    """HTTP connections allowed at once: MAX_CONNECTIONS, or a quarter of the descriptors
    still free when the limit is low; the rest stay free for the gRPC socket."""
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    return max(4, min(MAX_CONNECTIONS, (soft_limit - in_use) // 4))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


class _Bounded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a deadline and a place in the count."""

    def __init__(self, inner: Any, limits: _Limits) -> None:
        self._inner = inner
        self._limits = limits
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._limits.open += 1
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(
            CONNECTION_SECONDS, cast(asyncio.Transport, transport).abort
        )
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._limits.open -= 1
        if self._deadline is not None:
            self._deadline.cancel()
        self._inner.connection_lost(exc)


@dataclass
class _Limits:
    max_connections: int
    open: int = 0


@dataclass
class Lifecycle:
    """What the endpoints report about the server itself."""

    serving: bool = False
    draining: bool = False


class OpsServer:
    def __init__(self, service: KeyService, metrics: Metrics, lifecycle: Lifecycle) -> None:
        self.service = service
        self.metrics = metrics
        self.lifecycle = lifecycle
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.address = ""
        self.limits = _Limits(MAX_CONNECTIONS)

    def _app(self) -> web.Application:
        app = web.Application()
        app.on_response_prepare.append(_hide_versions)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self, sock: socket.socket) -> str:
        """Serve on a socket from `listen`; returns its address."""
        self.address = _address(sock)
        self.limits = _Limits(connection_budget(raise_descriptor_limit()))
        self._runner = web.AppRunner(
            self._app(), access_log=None, keepalive_timeout=CONNECTION_SECONDS
        )
        await self._runner.setup()
        handler_factory = self._runner.server
        assert handler_factory is not None
        limits = self.limits

        def protocol() -> asyncio.Protocol:
            if limits.open >= limits.max_connections:
                return _Refused()
            return _Bounded(handler_factory(), limits)

        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(protocol, sock=sock)
        return self.address

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        status = self.service.status()
        return web.Response(status=200 if status.healthy else 503, text=status.healthz + "\n")

    async def _livez(self, _: web.Request) -> web.Response:
        alive = self.lifecycle.serving or self.lifecycle.draining
        return web.Response(status=200 if alive else 503, text="ok\n" if alive else "stopped\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = (
            self.lifecycle.serving
            and not self.lifecycle.draining
            and bool(self.service.sealer.key_id)
        )
        return web.Response(status=200 if ready else 503, text="ok\n" if ready else "not ready\n")


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen now (port 0 picks a free one); `OpsServer.start` serves on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    if not is_loopback(host):
        log.warning(
            "the HTTP endpoint listens beyond loopback: /metrics and the health endpoints "
            "are reachable from the network",
            extra={"address": _address(sock)},
        )
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


async def _hide_versions(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


def parse_address(value: str) -> tuple[str, int]:
    """`127.0.0.1:8095`, `[::1]:8095` or `:8095` (localhost)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)
