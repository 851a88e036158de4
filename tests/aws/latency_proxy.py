"""A latency-injecting HTTP reverse proxy for KMS benchmarks (issue 8).

It listens on 127.0.0.1, sleeps `delay_ms` per request (each request on its own: many
requests in flight sleep at the same time, nothing is serialized), then forwards the
request to an upstream (local-kms, tests/aws/emulator.py) and relays the answer. It counts
requests by their `X-Amz-Target` header (`TrentService.Encrypt`, `TrentService.Decrypt`,
`TrentService.GenerateDataKey`, `TrentService.DescribeKey`, ...; `METHOD /path` when a
request has none), so a benchmark can read how many remote KMS calls each plugin made.

With `quota_qps` it also models a KMS quota (Alibaba's shared gateway: ~1,000 QPS per
account and region; AWS KMS: a few thousand per key): a token bucket of `quota_qps` a
second (a tenth of a second deep) answers each request over it as the KMS does, without
forwarding it: AWS's 400 ThrottlingException when the request has an X-Amz-Target,
otherwise 429 (what Vault's rate-limit quotas answer). Those are counted as `throttled`
in the stats, not in `counts()`.

Forwarding keeps the request as the client signed it: method, raw path and query, every
header but the hop-by-hop ones (Connection, Keep-Alive, Transfer-Encoding, ...), in order
and case, including Host, Authorization and X-Amz-*, so SigV4 still verifies upstream, and
the body byte for byte. The answer comes back with its status, headers and body unchanged
(no decompression). A chunked request body is forwarded with a Content-Length instead.
Client connections are kept alive, and so are the connections to the upstream.

Three ways to run it, all with `.url`, `.counts()`, `.stats()`, `.reset()`, `.delay_ms`:
- `AsyncLatencyProxy(upstream, delay_ms)`: `await start()` / `await aclose()` in your loop;
- `LatencyProxy(upstream, delay_ms).start()`: its own loop in a background thread,
  `stop()` (also a context manager): usable from synchronous code, boto3 included;
- `LatencyProxyProcess(upstream, delay_ms).start()`: a child process, `stop()` by PID;
- the CLI: `python tests/aws/latency_proxy.py --upstream URL --delay-ms 5 --port 0` prints
  its URL on the first stdout line and serves until SIGTERM or SIGINT.

Over HTTP, on the proxy's own address (these paths are never forwarded nor delayed):
`GET /__proxy/counts` (JSON {target: n}), `GET /__proxy/stats` (counts plus requests,
distinct client connections, most requests in flight at once, upstream errors, delay_ms),
`POST /__proxy/reset` (zero everything) and `POST /__proxy/delay?ms=N` (change the delay).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import (
    ClientError,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    TCPConnector,
    web,
)
from multidict import CIMultiDict
from yarl import URL

CONTROL = "/__proxy/"
HOST = "127.0.0.1"
# Headers that belong to one hop, not to the request (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# aiohttp's client adds these to a request that lacks them; a proxy must not.
AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class AsyncLatencyProxy:
    """The proxy in the running event loop: `await start()`, then `await aclose()`."""

    def __init__(
        self,
        upstream: str,
        delay_ms: float = 0.0,
        port: int = 0,
        quota_qps: float | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.delay_ms = float(delay_ms)
        self.port = port
        self.quota = _Quota(quota_qps) if quota_qps else None
        self._throttled = 0
        self._lock = threading.Lock()  # counts() may be read from another thread
        self._counts: Counter[str] = Counter()
        self._peers: set[Any] = set()
        self._in_flight = 0
        self._max_in_flight = 0
        self._errors = 0
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- counters ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Requests forwarded since the last reset, by X-Amz-Target."""
        with self._lock:
            return dict(self._counts)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "counts": dict(self._counts),
                "requests": sum(self._counts.values()),
                "connections": len(self._peers),
                "max_in_flight": self._max_in_flight,
                "errors": self._errors,
                "throttled": self._throttled,
                "quota_qps": self.quota.rate if self.quota else None,
                "delay_ms": self.delay_ms,
            }

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._peers.clear()
            self._max_in_flight = self._in_flight
            self._errors = 0
            self._throttled = 0

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> AsyncLatencyProxy:
        self._session = ClientSession(
            connector=TCPConnector(limit=0),  # no pool cap: concurrency is the caller's
            timeout=ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
            cookie_jar=DummyCookieJar(),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=1024).start()
        return self

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncLatencyProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- requests ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            return self._control(request)
        target = request.headers.get("X-Amz-Target") or f"{request.method} {request.path}"
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if self.quota is not None and not self.quota.take():
            with self._lock:
                self._throttled += 1
            return _throttled(request)
        with self._lock:
            self._counts[target] += 1
            self._peers.add(peer)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            return await self._forward(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        if self.delay_ms > 0:
            await asyncio.sleep(self.delay_ms / 1000)
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP
        )
        if "Content-Length" not in headers and body:
            headers["Content-Length"] = str(len(body))  # a chunked request, now framed
        url = URL(self.upstream + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                skip_auto_headers=AUTO_HEADERS,
            ) as answer:
                payload = await answer.read()
                out = CIMultiDict(
                    (name, value)
                    for name, value in answer.headers.items()
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
                )
                return web.Response(
                    status=answer.status, reason=answer.reason, body=payload, headers=out
                )
        except (TimeoutError, ClientError, OSError) as exc:
            with self._lock:
                self._errors += 1
            return web.Response(status=502, text=f"latency proxy: upstream failed: {exc!r}")

    def _control(self, request: web.Request) -> web.Response:
        name = request.path[len(CONTROL) :]
        if name == "counts" and request.method == "GET":
            return web.json_response(self.counts())
        if name == "stats" and request.method == "GET":
            return web.json_response(self.stats())
        if name == "reset" and request.method == "POST":
            self.reset()
            return web.json_response({})
        if name == "delay" and request.method == "POST":
            try:
                self.delay_ms = max(0.0, float(request.query["ms"]))
            except (KeyError, ValueError):
                return web.json_response({"error": "POST /__proxy/delay?ms=N"}, status=400)
            return web.json_response({"delay_ms": self.delay_ms})
        return web.json_response({"error": f"no control {request.method} {name}"}, status=404)


class _Quota:
    """A token bucket: `rate` requests a second, `rate / 10` at once (at least one)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate / 10)
        self.tokens = self.capacity
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _throttled(request: web.Request) -> web.Response:
    """What the KMS answers over quota: AWS's throttling error, else Vault's 429."""
    if request.headers.get("X-Amz-Target"):
        return web.json_response(
            {"__type": "ThrottlingException", "message": "Rate exceeded"},
            status=400,
            headers={"x-amzn-ErrorType": "ThrottlingException"},
            content_type="application/x-amz-json-1.1",
        )
    return web.json_response({"errors": ["rate limit quota exceeded"]}, status=429)


class LatencyProxy:
    """The proxy on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(
        self,
        upstream: str,
        delay_ms: float = 0.0,
        port: int = 0,
        quota_qps: float | None = None,
    ) -> None:
        self.proxy = AsyncLatencyProxy(upstream, delay_ms, port, quota_qps)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def delay_ms(self) -> float:
        return self.proxy.delay_ms

    @delay_ms.setter
    def delay_ms(self, value: float) -> None:
        self.proxy.delay_ms = float(value)

    def counts(self) -> dict[str, int]:
        return self.proxy.counts()

    def stats(self) -> dict[str, Any]:
        return self.proxy.stats()

    def reset(self) -> None:
        self.proxy.reset()

    def start(self, timeout: float = 10.0) -> LatencyProxy:
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the latency proxy did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the latency proxy did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.proxy.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                await self.proxy.aclose()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.proxy.aclose()

        asyncio.run(main())

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LatencyProxyProcess:
    """The proxy as a child process (this file's CLI); counters are read over HTTP."""

    def __init__(
        self, upstream: str, delay_ms: float = 0.0, port: int = 0, log: Path | None = None
    ) -> None:
        self.upstream = upstream
        self._delay_ms = float(delay_ms)
        self.port = port
        self.log = log
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 10.0) -> LatencyProxyProcess:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--upstream",
            self.upstream,
            "--delay-ms",
            str(self._delay_ms),
            "--port",
            str(self.port),
        ]
        with contextlib.ExitStack() as stack:
            err = stack.enter_context(self.log.open("ab")) if self.log else subprocess.DEVNULL
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the latency proxy process did not start (said {line!r})")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def _call(self, method: str, path: str) -> Any:
        # S310: the URL is our own http://127.0.0.1 one, never a file: or custom scheme.
        request = urllib.request.Request(self.url + CONTROL + path, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return json.loads(answer.read())

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._call("GET", "counts").items()}

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "stats"))

    def reset(self) -> None:
        self._call("POST", "reset")

    @property
    def delay_ms(self) -> float:
        return self._delay_ms

    @delay_ms.setter
    def delay_ms(self, value: float) -> None:
        self._call("POST", f"delay?ms={float(value)}")
        self._delay_ms = float(value)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> LatencyProxyProcess:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _serve(upstream: str, delay_ms: float, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with AsyncLatencyProxy(upstream, delay_ms, port) as proxy:
        print(proxy.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--upstream", required=True, help="where to forward, e.g. local-kms")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added per request")
    parser.add_argument("--port", type=int, default=0, help="on 127.0.0.1; 0 picks a free one")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.upstream, args.delay_ms, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
