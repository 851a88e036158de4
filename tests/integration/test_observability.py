"""What an operator sees: metrics that move, health that flips, logs without secrets."""

from __future__ import annotations

import base64
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import anyio
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kmsplug.client import KmsClient

from fakes.alibaba_kms import FakeAlibabaKms
from fakes.alibaba_provider import env_for
from plugin_process import PluginFactory, PluginProcess

pytestmark = pytest.mark.anyio


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(plugin: PluginProcess, name: str, **labels: str) -> float:
    _, text = get(plugin.http_url + "/metrics")
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.fixture
def fake() -> Iterator[FakeAlibabaKms]:
    kms = FakeAlibabaKms().start()
    yield kms
    kms.stop()


async def test_metrics_move_with_the_calls(plugin: PluginProcess) -> None:
    ok = {"api": "v1beta1", "method": "Encrypt", "code": "OK"}
    before = sample(plugin, "kmsplug_requests_total", **ok)
    async with KmsClient(plugin.endpoint) as client:
        for _ in range(200):
            await client.v1_encrypt(secrets.token_bytes(32))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.v1_decrypt(b"garbage")
        status = await client.v2_status()
    assert sample(plugin, "kmsplug_requests_total", **ok) - before == 200
    bad = {"api": "v1beta1", "method": "Decrypt", "code": "INVALID_ARGUMENT"}
    assert sample(plugin, "kmsplug_requests_total", **bad) == 1
    latency = {"api": "v1beta1", "method": "Encrypt"}
    assert sample(plugin, "kmsplug_request_duration_seconds_count", **latency) >= 200
    # the fastest bucket is tens of microseconds: a local Encrypt lands in the low buckets
    assert sample(plugin, "kmsplug_request_duration_seconds_bucket", le="0.001", **latency) > 0
    assert sample(plugin, "kmsplug_local_kek_seals") >= 200
    assert sample(plugin, "kmsplug_healthy") == 1
    _, text = get(plugin.http_url + "/metrics")
    assert status.key_id not in text  # only its hash is published
    assert 'kmsplug_key_id_info{key_id_hash="sha256:' in text


async def test_health_endpoints_flip_with_the_kms_and_recover(
    fake: FakeAlibabaKms, plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = fake.create_key()
    for name, value in env_for(fake).items():
        monkeypatch.setenv(name, value)
    plugin = plugin_factory(
        *("--provider", "alibaba", "--key-id", key, "--region", fake.region),
        *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
        *("--health-probe-interval", "0.3"),
    )
    url = plugin.http_url
    assert [get(url + p)[0] for p in ("/healthz", "/livez", "/readyz")] == [200, 200, 200]
    fake.set_key_state(key, "Disabled")

    def wait_for(path: str, status: int) -> None:
        deadline = time.monotonic() + 15
        while get(url + path)[0] != status:
            assert time.monotonic() < deadline, f"{path} never answered {status}"
            time.sleep(0.1)

    wait_for("/healthz", 503)
    assert "disabled or pending deletion" in get(url + "/healthz")[1]
    assert get(url + "/livez")[0] == 200  # a disabled key is no reason to restart the plugin
    async with KmsClient(plugin.endpoint) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # revoked: Status fails
            await client.v2_status()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        fake.set_key_state(key, "Enabled")
        wait_for("/healthz", 200)
        assert (await client.v2_status()).healthz == "ok"
    assert sample(plugin, "kmsplug_remote_calls_total", provider="alibaba") > 0
    timed = sample(plugin, "kmsplug_remote_call_duration_seconds_count", provider="alibaba")
    assert timed >= sample(plugin, "kmsplug_remote_calls_total", provider="alibaba") > 0


async def test_logs_hold_no_dek_in_any_encoding(plugin_factory: PluginFactory) -> None:
    plugin = plugin_factory("--log-level", "debug", "--log-format", "json")
    deks = [secrets.token_bytes(32) for _ in range(300)]
    async with KmsClient(plugin.endpoint) as client:
        limiter = anyio.Semaphore(32)

        async def round_trip(dek: bytes) -> None:
            async with limiter:
                sealed = await client.v2_encrypt(dek)
                assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.v2_decrypt(sealed.ciphertext[:-1], sealed.key_id)

        async with anyio.create_task_group() as tasks:
            for dek in deks:
                tasks.start_soon(round_trip, dek)
    assert plugin.terminate() == 0
    raw = plugin.log_path.read_bytes() if plugin.log_path else b""
    assert b"stopped" in raw
    for dek in deks:
        for form in (dek, dek.hex().encode(), base64.b64encode(dek), base64.b64encode(dek)[:24]):
            assert form not in raw
    key = plugin.key_file.read_bytes()
    assert key not in raw and key.hex().encode() not in raw and base64.b64encode(key) not in raw


async def test_grpc_health_service_on_the_socket(plugin: PluginProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(plugin.endpoint.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "v2.KeyManagementService", "v1beta1.KeyManagementService"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_audit_trail_records_remote_calls_and_key_events(
    fake: FakeAlibabaKms,
    plugin_factory: PluginFactory,
    monkeypatch: pytest.MonkeyPatch,
    short_tmp: object,
) -> None:
    import json
    from pathlib import Path

    key = fake.create_key()
    env = env_for(fake)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    trail = Path(str(short_tmp)) / "audit.jsonl"
    plugin = plugin_factory(
        *("--provider", "alibaba", "--key-id", key, "--region", fake.region),
        *("--kms-endpoint", fake.host, "--kms-protocol", "http", "--audit-log", str(trail)),
    )
    async with KmsClient(plugin.endpoint) as client:
        dek = secrets.token_bytes(32)
        assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek
    assert plugin.terminate() == 0
    records = [json.loads(line) for line in trail.read_text().splitlines()]
    events = {r.get("event") for r in records}
    assert {"preflight", "rotation"} <= events
    calls = [r for r in records if r.get("operation")]
    assert {c["operation"] for c in calls} >= {"wrap", "health"}  # KEK wrap, probe round trip
    assert all(c["provider"] == "alibaba" and c["outcome"] for c in calls)
    assert all(c["request_id"] and c["latency_ms"] >= 0 for c in calls if c["outcome"] == "ok")
    text = trail.read_text()
    assert env["ACCESS_KEY_SECRET"] not in text and dek.hex() not in text
