"""The plugin process: claim the socket, serve both KMS APIs, stop without losing a call.

Shutdown on SIGTERM/SIGINT: remove the socket file (new connections fail fast and a
replacement can bind), keep serving until every call in flight has finished (bounded by
the grace period), then stop the gRPC server. A second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kmsplug.core import RotationPolicy
from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError
from kmsplug.metrics import Metrics
from kmsplug.ops_http import Lifecycle, OpsServer, parse_address
from kmsplug.service import KeyService
from kmsplug.servicers import InflightCounter, register
from kmsplug.sockets import SocketGuard

log = logging.getLogger(__name__)

# grpc core cancels calls beyond ~1,000 waiting for a handler by default; the apiserver
# can send thousands at once after a restart, so size the queue deliberately.
MAX_PENDING_CALLS = 65536

# The gRPC health service answers for the server as a whole and for each KMS service.
GRPC_HEALTH_NAMES = ("", "v2.KeyManagementService", "v1beta1.KeyManagementService")

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ("grpc.max_concurrent_streams", MAX_PENDING_CALLS),
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
    # The umask covers the instant between bind() and chmod(); chmod sets the final mode.
    old_umask = os.umask(0o177)
    try:
        port = server.add_insecure_port(guard.endpoint.grpc_target)
        await server.start()
    finally:
        os.umask(old_umask)
    if port == 0:  # pragma: no cover - grpc raises first on current versions
        raise ConfigError(f"could not bind {guard.endpoint}")
    guard.set_mode(mode)


async def _drain(inflight: InflightCounter, grace_period: float, quiet: float = 0.25) -> None:
    """Wait until no call is in flight and none arrived for `quiet` s, or the grace ends."""
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
                return


async def serve(
    service: KeyService,
    settings: ServerSettings,
    *,
    on_ready: Callable[[], None] | None = None,
    reread_policy: Callable[[], RotationPolicy] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    SIGHUP re-reads the rotation settings (`reread_policy`) and the remote key's state.
    """
    await service.start()
    inflight = InflightCounter()
    metrics = Metrics()
    metrics.watch(service)
    lifecycle = Lifecycle()
    ops = OpsServer(service, metrics, lifecycle)
    with SocketGuard(settings.endpoint) as guard:
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
        if settings.http_address:
            try:
                address = await ops.start(*parse_address(settings.http_address))
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot serve HTTP on {settings.http_address!r}: {exc}"
                ) from None
            log.info("metrics and health", extra={"url": f"http://{address}/metrics"})
        lifecycle.serving = True
        for name in GRPC_HEALTH_NAMES:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"endpoint": str(settings.endpoint)})
        if on_ready is not None:
            on_ready()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(service.run_background)
            tasks.start_soon(_reload_on_sighup, service, reread_policy)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("stopping", extra={"signal": signal.Signals(signum).name})
                    break
                guard.remove_socket()
                lifecycle.draining = True
                await health.enter_graceful_shutdown()
                tasks.start_soon(_stop_now_on_second_signal, signals, server)
                await _drain(inflight, settings.grace_period)
                await server.stop(grace=1.0)
                lifecycle.serving = False
                await ops.stop()
                tasks.cancel_scope.cancel()
    log.info("stopped")


async def _reload_on_sighup(
    service: KeyService, reread_policy: Callable[[], RotationPolicy] | None
) -> None:
    """SIGHUP: new rotation settings and the remote key's state, without a restart."""
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
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
