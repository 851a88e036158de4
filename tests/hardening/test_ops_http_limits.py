"""Issue 12, point 4 (the HTTP endpoint cannot starve the gRPC socket) and the part of
point 8 about the HTTP port (a second kmsplug fails cleanly before it binds anything).

Real `kmsplug serve` processes; hostile connections from this process on 127.0.0.1.
"""

from __future__ import annotations

import logging
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import pytest

from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint

from plugin_process import PluginFactory, PluginProcess

pytestmark = pytest.mark.anyio

SLOW_CONNECTIONS = 450
PLUGIN_DESCRIPTORS = 256  # the plugin's soft RLIMIT_NOFILE: 450 connections would exhaust it


def http_port(plugin: PluginProcess) -> int:
    return int(plugin.http_url.rsplit(":", 1)[1])


def livez(plugin: PluginProcess) -> tuple[int, str]:
    with urllib.request.urlopen(plugin.http_url + "/livez", timeout=10) as response:  # noqa: S310
        return response.status, response.headers["Server"]


@pytest.fixture
def low_descriptor_plugin(plugin_factory: PluginFactory) -> PluginProcess:
    """A plugin started with a soft RLIMIT_NOFILE of PLUGIN_DESCRIPTORS, as systemd's
    default soft limit of 1024 is low (inherited from this process for the moment of the
    start, then restored here; the hard limit is left alone)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (PLUGIN_DESCRIPTORS, before[1]))
    try:
        plugin = plugin_factory()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
    return plugin


async def test_slow_half_sent_requests_cannot_starve_the_grpc_socket(
    low_descriptor_plugin: PluginProcess,
) -> None:
    plugin = low_descriptor_plugin
    port = http_port(plugin)
    held: list[socket.socket] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never ends
            held.append(conn)
        # A new gRPC connection still gets its answer.
        async with KmsClient(plugin.endpoint, timeout=10) as client:
            status = await client.v2_status(wait_for_ready=True)
        assert status.healthz == "ok"
        # The half-sent requests are dropped within the header deadline (5 s here)...
        deadline = time.monotonic() + 30
        open_ones = list(held)
        while open_ones and time.monotonic() < deadline:
            still = []
            for conn in open_ones:
                conn.settimeout(0.01)
                try:
                    if conn.recv(1) == b"":
                        continue  # closed by the plugin
                except TimeoutError:
                    still.append(conn)
                except OSError:
                    continue  # reset by the plugin
            open_ones = still
        assert open_ones == [], f"{len(open_ones)} slow connections still open"
    finally:
        for conn in held:
            conn.close()
    # ...and the endpoint serves again afterwards, naming no library versions.
    status_code, server = await anyio.to_thread.run_sync(livez, plugin)
    assert (status_code, server) == (200, "kmsplug")
    assert plugin.proc is not None and plugin.proc.poll() is None


def test_listening_beyond_loopback_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    from kmsplug.ops_http import is_loopback, listen

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")  # noqa: S104
    with caplog.at_level(logging.WARNING, logger="kmsplug.ops_http"):
        listen("127.0.0.1", 0).close()
        assert caplog.records == []
        listen("0.0.0.0", 0).close()  # noqa: S104 - bound and closed at once, never served
    assert any("beyond loopback" in record.getMessage() for record in caplog.records)


def test_second_plugin_on_the_same_http_port_fails_cleanly_before_binding(
    plugin: PluginProcess, short_tmp: Path
) -> None:
    """Two kmsplug processes on one host with one HTTP port: the second exits 1 with one
    line, before it claims its socket (its socket directory is never even created)."""
    socket_dir = short_tmp / "second"
    second = subprocess.run(
        [
            *(sys.executable, "-m", "kmsplug", "serve"),
            *("--socket", Endpoint(path=str(socket_dir / "kms.sock")).url),
            *("--key-file", str(short_tmp / "second.key")),
            *("--http-address", f"127.0.0.1:{http_port(plugin)}"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("kmsplug: cannot serve HTTP on '127.0.0.1:")
    assert "address already in use" in last and "--http-address" in last
    assert not socket_dir.exists()
