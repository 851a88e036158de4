"""The operator's HTTP endpoint, on localhost: /metrics, /healthz, /livez, /readyz.

- /livez: the process can serve (its event loop answers and the gRPC server runs). It
  never fails because the KMS throttles or a caller sent garbage: a restart would not help.
- /readyz: serving, with a usable write key, and not draining for shutdown.
- /healthz: deep: the background prober's last verdict on the write KEK (reachable, wrap
  and unwrap permitted), from cache: a scrape never costs a KMS call.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kmsplug.metrics import Metrics
from kmsplug.service import KeyService


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
        self.address = ""

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self, host: str, port: int) -> str:
        """Listen; returns the address actually bound (port 0 picks a free one)."""
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0] if self._runner.addresses else (host, port)
        self.address = f"{bound[0]}:{bound[1]}"
        return self.address

    async def stop(self) -> None:
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


def parse_address(value: str) -> tuple[str, int]:
    """`127.0.0.1:8095`, `[::1]:8095` or `:8095` (localhost)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)
