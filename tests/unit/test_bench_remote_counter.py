"""RemoteCounter sums a plugin's remote-call counters from a real HTTP endpoint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kmsplug.bench.engine import RemoteCounter
from kmsplug.errors import ConfigError

EXPOSITION = b"""\
# HELP kmsplug_remote_calls_total Calls to the remote KMS.
# TYPE kmsplug_remote_calls_total counter
kmsplug_remote_calls_total{provider="aws",operation="encrypt",outcome="ok"} 3.0
kmsplug_remote_calls_total{provider="aws",operation="decrypt",outcome="ok"} 4.0
kmsplug_remote_calls_created{provider="aws",operation="decrypt",outcome="ok"} 1.7e9
# HELP peer_kms_operations_total A peer's counter.
# TYPE peer_kms_operations_total counter
peer_kms_operations_total{operation="encrypt"} 10
peer_kms_operations_total{operation="decrypt"} 5
# TYPE unrelated_total counter
unrelated_total 1000
"""


@pytest.fixture
def metrics_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(EXPOSITION)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def test_sums_every_sample_of_the_named_counters(metrics_url: str) -> None:
    assert RemoteCounter(metrics_url).read() == 7  # kmsplug's, _created ignored
    assert RemoteCounter(metrics_url, ["peer_kms_operations_total"]).read() == 15
    assert RemoteCounter(metrics_url, ["kmsplug_remote_calls", "peer_kms_operations"]).read() == 22
    assert RemoteCounter(metrics_url, ["absent"]).read() == 0


def test_an_unreachable_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot read metrics from http://127\.0\.0\.1:9/"):
        RemoteCounter("http://127.0.0.1:9/").read()
