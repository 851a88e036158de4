"""The plugin process: claim the socket, serve both KMS APIs, stop without losing a call.

Shutdown on SIGTERM/SIGINT: remove the socket file (new connections fail fast and a
replacement can bind); keep serving until the calls stop coming (a quiet gap) or the
grace period ends; then answer every new call UNAVAILABLE (the caller retries, and
reaches the replacement), let the calls being served finish, hang up the clients'
connections and stop the gRPC server. A second signal stops at once.

Why hang up rather than let grpc stop the connections: grpc core's shutdown cancels
(RST_STREAM CANCEL) every call that reached it but not yet the Python loop, and every
call sent in the moment before its GOAWAY reaches the client; under steady load that
was a few CANCELLED calls per shutdown. A closed connection ends those calls UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kmsplug.core import RotationPolicy
from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError
from kmsplug.metrics import Metrics
from kmsplug.ops_http import Lifecycle, OpsServer, listen, parse_address
from kmsplug.service import KeyService
from kmsplug.servicers import InflightCounter, register
from kmsplug.sockets import SocketGuard

log = logging.getLogger(__name__)

# The gRPC health service answers for the server as a whole and for each KMS service.
GRPC_HEALTH_NAMES = ("", "v2.KeyManagementService", "v1beta1.KeyManagementService")

# Stream and queue limits (issue 12, point 3; figures in docs/security.md). They must hold
# a real burst and a hostile flood alike:
# - MAX_CONCURRENT_STREAMS per connection: grpc clients (grpc-go in kube-apiserver, grpc
#   core in Python) queue calls beyond it instead of failing (measured: 5,000 concurrent
#   round trips, all OK). Half-open streams are bounded by it: extra HEADERS are refused
#   (REFUSED_STREAM) before they cost memory.
# - grpc core's "overload protection" is off: it refuses a stream whenever more streams are
#   allocated than the limit, counting those a client already saw finish but Python has
#   not released yet, so a client that queues at the limit gets REFUSED_STREAM failures
#   (measured: 4,103 of 5,000 grpc-go round trips at 128, 3,044 at 1,024).
# - MAX_PENDING_CALLS: calls core holds until the Python loop takes them. A rapid-reset
#   flood (HEADERS + RST_STREAM, which no stream limit counts) lands here; beyond the
#   bound core drops them itself, so Python handles at most this many dead calls at a
#   time (~80 us each) and memory stays flat. Legit callers stay below it: at most
#   MAX_CONCURRENT_STREAMS per connection wait, and kube-apiserver holds a few connections.
MAX_CONCURRENT_STREAMS = 128
MAX_PENDING_CALLS = 1024

# After the grace period, calls being served get this long to finish before the hang-up.
FINISH_SECONDS = 2.0

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
    ("grpc.http.overload_protection", 0),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ("grpc.so_reuseport", 0),
)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    endpoint: Endpoint
    socket_mode: int = 0o600
    grace_period: float = 15.0
    v2_status_version: str = "v2"
    enable_v1: bool = True
    http_address: str = "127.0.0.1:8095"
    """/metrics, /healthz, /livez, /readyz; empty to turn the endpoint off."""


def new_grpc_server() -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS)


async def _bind(server: grpc.aio.Server, guard: SocketGuard, mode: int) -> None:
    """Bind the socket with its final mode: the umask gives it at bind(), so no chmod on
    the path follows (one that another user could aim elsewhere by swapping in a link)."""
    old_umask = os.umask(0o777 & ~mode)
    try:
        port = server.add_insecure_port(guard.endpoint.grpc_target)
        await server.start()
    finally:
        os.umask(old_umask)
    if port == 0:  # pragma: no cover - grpc raises first on current versions
        raise ConfigError(f"could not bind {guard.endpoint}")


async def _drain(inflight: InflightCounter, grace_period: float, quiet: float = 0.25) -> None:
    """Serve until no call arrived for `quiet` s or the grace period ends; then refuse new
    calls (UNAVAILABLE) and let those being served finish."""
    with anyio.move_on_after(grace_period):
        seen = inflight.started
        idle_since = anyio.current_time()
        while True:
            await anyio.sleep(0.01)
            now = anyio.current_time()
            if inflight.value or inflight.started != seen:
                seen = inflight.started
                idle_since = now
            elif now - idle_since >= quiet:
                break
    inflight.draining = True
    for _ in range(int(FINISH_SECONDS / 0.01)):
        if not inflight.value:
            break
        await anyio.sleep(0.01)
    await anyio.sleep(0.05)  # grpc core writes the last answers out


def _hang_up(endpoint: Endpoint) -> int:
    """Shut down every accepted connection on our socket (not the listener); returns how
    many. Clients see the connection close: calls still unanswered end UNAVAILABLE."""
    closed = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            conn = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # not a socket, or gone since listdir
            continue
        with conn:
            try:
                if conn.family != socket.AF_UNIX or conn.type != socket.SOCK_STREAM:
                    continue
                if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue  # the listener
                if conn.getsockname() not in (endpoint.sockaddr, endpoint.sockaddr.encode()):
                    continue
                conn.shutdown(socket.SHUT_RDWR)
                closed += 1
            except OSError:
                continue
    return closed


async def serve(
    service: KeyService,
    settings: ServerSettings,
    *,
    on_ready: Callable[[], None] | None = None,
    reread_policy: Callable[[], RotationPolicy] | None = None,
    http_socket: socket.socket | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    SIGHUP re-reads the rotation settings (`reread_policy`) and the remote key's state.
    `http_socket` is the HTTP endpoint's socket when the caller bound it already
    (`listen_http`); otherwise it is bound here, first.
    """
    # The HTTP port first: a second kmsplug on the host fails here, cleanly, before it
    # touches a KMS or the socket.
    if http_socket is None:
        http_socket = listen_http(settings.http_address)
    with contextlib.ExitStack() as cleanup:
        if http_socket is not None:
            cleanup.callback(http_socket.close)
        await _serve(service, settings, http_socket, on_ready, reread_policy)
    log.info("stopped")


class HttpAddressInUse(ConfigError):
    """Something else (another kmsplug?) listens on the HTTP endpoint's address."""


def listen_http(address: str) -> socket.socket | None:
    """Bind the HTTP endpoint's address ('' for none); ConfigError saying why it cannot."""
    if not address:
        return None
    try:
        return listen(*parse_address(address))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        in_use = isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
        raise (HttpAddressInUse if in_use else ConfigError)(
            f"cannot serve HTTP on {address!r}: {reason.lower()}; each kmsplug on a host "
            "needs its own --http-address (or '' to turn it off)"
        ) from None


def check_http_address(address: str) -> str:
    """For `config --check`: ConfigError if `address` cannot be served here (malformed, not
    an address of this host, a privileged port); a busy port is only a note returned, as
    the kmsplug a file configures may be the one holding it. '' if all is well."""
    try:
        bound = listen_http(address)
    except HttpAddressInUse as exc:
        return f"note: {exc}"
    if bound is not None:
        bound.close()
    return ""


async def _serve(
    service: KeyService,
    settings: ServerSettings,
    http_socket: socket.socket | None,
    on_ready: Callable[[], None] | None,
    reread_policy: Callable[[], RotationPolicy] | None,
) -> None:
    await service.start()
    inflight = InflightCounter()
    metrics = Metrics()
    metrics.watch(service)
    lifecycle = Lifecycle()
    ops = OpsServer(service, metrics, lifecycle)
    # The signal handlers go in before the socket answers: a SIGHUP (or SIGTERM) sent as
    # soon as a client sees the socket must not meet the default action (termination).
    with (
        anyio.open_signal_receiver(signal.SIGHUP) as hangups,
        anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        SocketGuard(settings.endpoint) as guard,
    ):
        server = new_grpc_server()
        register(
            server,
            service,
            inflight,
            v2_status_version=settings.v2_status_version,
            enable_v1=settings.enable_v1,
            metrics=metrics,
        )
        health = grpc_health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        await _bind(server, guard, settings.socket_mode)
        if http_socket is not None:
            address = await ops.start(http_socket)
            log.info("metrics and health", extra={"url": f"http://{address}/metrics"})
        lifecycle.serving = True
        for name in GRPC_HEALTH_NAMES:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"endpoint": str(settings.endpoint)})
        if on_ready is not None:
            on_ready()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(service.run_background)
            tasks.start_soon(_reload_on_sighup, service, reread_policy, hangups)
            async for signum in signals:
                log.info("stopping", extra={"signal": signal.Signals(signum).name})
                break
            guard.remove_socket()
            lifecycle.draining = True
            await health.enter_graceful_shutdown()
            tasks.start_soon(_stop_now_on_second_signal, signals, server)
            await _drain(inflight, settings.grace_period)
            if sys.platform.startswith("linux"):
                log.debug("hung up", extra={"connections": _hang_up(settings.endpoint)})
            await server.stop(grace=1.0)
            lifecycle.serving = False
            await ops.stop()
            tasks.cancel_scope.cancel()


async def _reload_on_sighup(
    service: KeyService,
    reread_policy: Callable[[], RotationPolicy] | None,
    hangups: AsyncIterator[int],
) -> None:
    """SIGHUP: new rotation settings and the remote key's state, without a restart."""
    async for _ in hangups:
        log.info("SIGHUP: reloading")
        policy = None
        if reread_policy is not None:
            try:
                policy = reread_policy()
            except Exception as exc:  # a broken file keeps the settings in force
                log.warning("reload: settings unreadable", extra={"error": str(exc)})
        await service.reload(policy)


async def _stop_now_on_second_signal(signals: object, server: grpc.aio.Server) -> None:
    async for _ in signals:  # type: ignore[attr-defined]
        log.warning("second signal: stopping now")
        await server.stop(grace=None)
        return
