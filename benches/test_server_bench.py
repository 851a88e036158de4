"""One call at a time over the socket: kmsplug vs an empty-handler grpc.aio server.

Both are separate processes with the same server options and event loop (see
empty_server.py); the client is grpc's synchronous stub, so each round is one full
request → response on the UNIX socket. The ratio is the cost kmsplug's work adds per call.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from kmsplug._proto.v1beta1 import api_pb2 as v1
from kmsplug._proto.v1beta1 import api_pb2_grpc as v1_grpc
from kmsplug._proto.v2 import api_pb2 as v2
from kmsplug._proto.v2 import api_pb2_grpc as v2_grpc
from kmsplug.endpoint import Endpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from plugin_process import PluginProcess  # noqa: E402

DEK = secrets.token_bytes(32)


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def sockets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("srv")
    empty_path = tmp / "empty.sock"
    empty = subprocess.Popen([sys.executable, str(HERE / "empty_server.py"), str(empty_path)])
    kmsplug = PluginProcess(Endpoint(path=str(tmp / "kmsplug.sock")), tmp / "local.key").start()
    try:
        _wait_for_socket(empty_path, empty)
        yield {
            "baseline-empty-server": f"unix:{empty_path}",
            "kmsplug": kmsplug.endpoint.grpc_target,
        }
    finally:
        kmsplug.terminate()
        empty.terminate()
        empty.wait(10)


Stubs = tuple[Any, Any]


@pytest.fixture(scope="module", params=["baseline-empty-server", "kmsplug"])
def stubs(request: pytest.FixtureRequest, sockets: dict[str, str]) -> Iterator[Stubs]:
    channel = grpc.insecure_channel(
        sockets[request.param], options=[("grpc.default_authority", "localhost")]
    )
    grpc.channel_ready_future(channel).result(timeout=20)
    yield v1_grpc.KeyManagementServiceStub(channel), v2_grpc.KeyManagementServiceStub(channel)
    channel.close()


def _run(benchmark: BenchmarkFixture, call: Callable[[], Any]) -> Any:
    return benchmark.pedantic(call, rounds=2000, iterations=1, warmup_rounds=100)


def test_v1_encrypt(benchmark: BenchmarkFixture, stubs: Stubs) -> None:
    benchmark.group = "socket round trip: v1 Encrypt 32 B"
    reply = _run(
        benchmark, lambda: stubs[0].Encrypt(v1.EncryptRequest(version="v1beta1", plain=DEK))
    )
    assert len(reply.cipher) > 32


def test_v2_decrypt(benchmark: BenchmarkFixture, stubs: Stubs) -> None:
    benchmark.group = "socket round trip: v2 Decrypt 32 B"
    sealed = stubs[1].Encrypt(v2.EncryptRequest(plaintext=DEK, uid="bench"))
    request = v2.DecryptRequest(ciphertext=sealed.ciphertext, uid="bench", key_id=sealed.key_id)
    reply = _run(benchmark, lambda: stubs[1].Decrypt(request))
    assert len(reply.plaintext) == 32


def test_v2_status(benchmark: BenchmarkFixture, stubs: Stubs) -> None:
    benchmark.group = "socket round trip: v2 Status"
    reply = _run(benchmark, lambda: stubs[1].Status(v2.StatusRequest()))
    assert reply.healthz == "ok"
