"""The plugin as kube-apiserver sees it: a real process, a real socket, a real gRPC client."""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import grpc
import pytest

from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint

from plugin_process import PluginFactory, PluginProcess

pytestmark = pytest.mark.anyio


async def test_both_apis_on_one_socket(plugin: PluginProcess) -> None:
    async with KmsClient(plugin.endpoint) as client:
        assert await client.v1_version() == "v1beta1"
        status = await client.v2_status()
        assert (status.version, status.healthz) == ("v2", "ok")
        assert status.key_id.startswith("local-")
        dek = secrets.token_bytes(32)
        assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek
        sealed = await client.v2_encrypt(dek)
        assert sealed.key_id == status.key_id
        assert len(sealed.ciphertext) <= 1024
        assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek


async def test_thousand_round_trips_per_api(plugin: PluginProcess) -> None:
    deks = [secrets.token_bytes(32) for _ in range(1000)]
    async with KmsClient(plugin.endpoint) as client:
        v1_ciphertexts = [await client.v1_encrypt(dek) for dek in deks]
        assert len(set(v1_ciphertexts)) == len(deks)
        assert [await client.v1_decrypt(ct) for ct in v1_ciphertexts] == deks
        v2_sealed = [await client.v2_encrypt(dek) for dek in deks]
        assert {s.key_id for s in v2_sealed} == {(await client.v2_status()).key_id}
        opened = [await client.v2_decrypt(s.ciphertext, s.key_id, s.annotations) for s in v2_sealed]
        assert opened == deks


async def test_v1_health_probe_ping(plugin: PluginProcess) -> None:
    async with KmsClient(plugin.endpoint) as client:
        cipher = await client.v1_encrypt(b"ping")
        assert b"ping" not in cipher
        assert await client.v1_decrypt(cipher) == b"ping"


async def test_restart_with_same_key_file_still_decrypts(plugin_factory: PluginFactory) -> None:
    first = plugin_factory()
    deks = [secrets.token_bytes(32) for _ in range(50)]
    async with KmsClient(first.endpoint) as client:
        key_id = (await client.v2_status()).key_id
        v1_cts = [await client.v1_encrypt(dek) for dek in deks]
        v2_cts = [await client.v2_encrypt(dek) for dek in deks]
    assert first.terminate() == 0
    second = plugin_factory()
    async with KmsClient(second.endpoint) as client:
        assert (await client.v2_status()).key_id == key_id
        assert [await client.v1_decrypt(ct) for ct in v1_cts] == deks
        assert [await client.v2_decrypt(s.ciphertext, s.key_id) for s in v2_cts] == deks


async def test_new_key_file_gives_new_key_id_and_old_stays_readable_when_listed(
    plugin_factory: PluginFactory,
) -> None:
    first = plugin_factory()
    dek = secrets.token_bytes(32)
    async with KmsClient(first.endpoint) as client:
        old = await client.v2_encrypt(dek)
        old_v1 = await client.v1_encrypt(dek)
    first.terminate()
    new_key = first.key_file.with_name("new.key")
    second = plugin_factory("--decrypt-key-file", str(first.key_file), key_file=new_key)
    async with KmsClient(second.endpoint) as client:
        status = await client.v2_status()
        assert status.key_id != old.key_id
        assert (await client.v2_encrypt(dek)).key_id == status.key_id
        assert await client.v2_decrypt(old.ciphertext, old.key_id) == dek
        assert await client.v1_decrypt(old_v1) == dek
    second.terminate()
    # Without the old key file listed, the old key is unknown: a clear error, not a crash.
    third = plugin_factory(key_file=new_key)
    async with KmsClient(third.endpoint) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.v2_decrypt(old.ciphertext, old.key_id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await client.v2_status()).healthz == "ok"


async def test_unknown_and_mismatched_key_id_refused(plugin: PluginProcess) -> None:
    async with KmsClient(plugin.endpoint) as client:
        sealed = await client.v2_encrypt(secrets.token_bytes(32))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.v2_decrypt(sealed.ciphertext, "local-0000000000000000000000000000dead")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == "unknown key_id"


@pytest.mark.parametrize("size", [513, 64 * 1024, 1024 * 1024])
async def test_oversized_plaintext_is_invalid_argument(plugin: PluginProcess, size: int) -> None:
    async with KmsClient(plugin.endpoint) as client:
        for call in (client.v1_encrypt, client.v2_encrypt):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"\0" * size)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await client.v2_status()).healthz == "ok"


@pytest.mark.parametrize("size", [2000, 70_000, 3 * 1024 * 1024])
async def test_oversized_ciphertext_is_invalid_argument(plugin: PluginProcess, size: int) -> None:
    blob = secrets.token_bytes(size)
    async with KmsClient(plugin.endpoint) as client:
        key_id = (await client.v2_status()).key_id
        for call in (client.v1_decrypt, lambda ct: client.v2_decrypt(ct, key_id)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(blob)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await client.v2_status()).healthz == "ok"


def _mutations(ciphertext: bytes, count: int) -> list[bytes]:
    """Random blobs, truncations, bit flips and splices of a valid ciphertext."""
    rng = secrets.SystemRandom()
    out: list[bytes] = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            out.append(secrets.token_bytes(rng.randint(0, 300)))
        elif kind == 1:
            out.append(ciphertext[: rng.randrange(len(ciphertext))])
        elif kind == 2:
            flipped = bytearray(ciphertext)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            out.append(bytes(flipped))
        elif kind == 3:
            out.append(ciphertext + secrets.token_bytes(rng.randint(1, 16)))
        else:
            cut = rng.randrange(len(ciphertext))
            out.append(ciphertext[:cut] + secrets.token_bytes(len(ciphertext) - cut))
    return out


async def test_ten_thousand_bad_ciphertexts_refused_server_alive(plugin: PluginProcess) -> None:
    dek = secrets.token_bytes(32)
    async with KmsClient(plugin.endpoint) as client:
        good_v1 = await client.v1_encrypt(dek)
        good_v2 = await client.v2_encrypt(dek)
        bad = [m for m in _mutations(good_v1, 5000) if m != good_v1]
        bad += [m for m in _mutations(good_v2.ciphertext, 5000) if m != good_v2.ciphertext]
        codes: dict[str, int] = {}
        details: set[str] = set()
        limiter = anyio.Semaphore(64)

        async def attempt(i: int, ciphertext: bytes) -> None:
            async with limiter:
                try:
                    if i % 2:
                        await client.v1_decrypt(ciphertext)
                    else:
                        await client.v2_decrypt(ciphertext, good_v2.key_id)
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                    details.add(exc.details() or "")
                else:
                    codes["OK"] = codes.get("OK", 0) + 1

        async with anyio.create_task_group() as tasks:
            for i, ciphertext in enumerate(bad):
                tasks.start_soon(attempt, i, ciphertext)
        assert len(bad) >= 9990
        assert codes == {"INVALID_ARGUMENT": len(bad)}
        assert details == {"invalid ciphertext"}
        assert await client.v1_decrypt(good_v1) == dek
        assert (await client.v2_status()).healthz == "ok"
    assert plugin.proc is not None and plugin.proc.poll() is None


async def test_burst_of_five_thousand_concurrent_round_trips(plugin: PluginProcess) -> None:
    failures: list[str] = []

    async def round_trip(client: KmsClient, i: int) -> None:
        dek = secrets.token_bytes(32)
        try:
            if i % 2:
                assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek
            else:
                sealed = await client.v2_encrypt(dek)
                assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
        except (grpc.aio.AioRpcError, AssertionError) as exc:
            failures.append(type(exc).__name__)

    async with KmsClient(plugin.endpoint, timeout=60) as client:
        await client.v2_status()
        async with anyio.create_task_group() as tasks:
            for i in range(5000):
                tasks.start_soon(round_trip, client, i)
    assert failures == []


async def test_sigterm_under_load_loses_no_call(plugin: PluginProcess) -> None:
    results: dict[str, int] = {"ok": 0, "failed": 0}
    flowing = anyio.Event()

    async def round_trip(client: KmsClient) -> None:
        dek = secrets.token_bytes(32)
        try:
            assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek
            results["ok"] += 1
        except (grpc.aio.AioRpcError, AssertionError):
            results["failed"] += 1
        if results["ok"] >= 200:  # the load is flowing: signal in the middle of it
            flowing.set()

    async with KmsClient(plugin.endpoint, timeout=30) as client:
        await client.v2_status()
        async with anyio.create_task_group() as tasks:
            for _ in range(3000):
                tasks.start_soon(round_trip, client)
            with anyio.fail_after(20):
                await flowing.wait()
            plugin.signal(signal.SIGTERM)
    assert results == {"ok": 3000, "failed": 0}
    assert plugin.wait(30) == 0
    assert not Path(plugin.endpoint.path).exists()
    assert "stopped" in plugin.log()


def test_second_serve_on_live_socket_is_refused(
    plugin: PluginProcess, plugin_factory: PluginFactory
) -> None:
    with pytest.raises(RuntimeError, match="already"):
        plugin_factory(endpoint=plugin.endpoint, key_file=plugin.key_file, name="second")
    assert plugin.proc is not None and plugin.proc.poll() is None
    ok = subprocess.run(
        [sys.executable, "-m", "kmsplug", "health", "--socket", plugin.endpoint.url],
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr


def test_stale_socket_after_kill_is_replaced(plugin_factory: PluginFactory) -> None:
    first = plugin_factory()
    first.signal(signal.SIGKILL)
    first.wait()
    assert stat.S_ISSOCK(os.lstat(first.endpoint.path).st_mode)  # left behind
    second = plugin_factory(endpoint=first.endpoint, key_file=first.key_file)
    assert second.proc is not None and second.proc.poll() is None


def test_socket_and_new_key_file_are_private(plugin: PluginProcess) -> None:
    assert stat.S_IMODE(os.stat(plugin.endpoint.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(plugin.key_file).st_mode) == 0o600
    assert plugin.key_file.stat().st_size == 32
    assert plugin.key_file.read_bytes().hex() not in plugin.log()


async def test_abstract_socket(plugin_factory: PluginFactory) -> None:
    endpoint = Endpoint(path=f"kmsplug-test-{secrets.token_hex(6)}", abstract=True)
    plugin = plugin_factory(endpoint=endpoint)
    async with KmsClient(endpoint) as client:
        dek = secrets.token_bytes(32)
        assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek
    with pytest.raises(RuntimeError, match="already"):
        plugin_factory(endpoint=endpoint, name="second")
    assert plugin.terminate() == 0


async def test_v2beta1_status_version_and_direct_mode(plugin_factory: PluginFactory) -> None:
    plugin = plugin_factory("--v2-status-version", "v2beta1", "--mode", "direct")
    async with KmsClient(plugin.endpoint) as client:
        status = await client.v2_status()
        assert status.version == "v2beta1"
        dek = secrets.token_bytes(32)
        sealed = await client.v2_encrypt(dek)
        assert sealed.key_id == status.key_id
        assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
        assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek


async def test_any_authority_is_accepted(plugin: PluginProcess) -> None:
    # Old apiservers let grpc-go send the socket path as :authority.
    options = (("grpc.default_authority", plugin.endpoint.path),)
    async with grpc.aio.insecure_channel(plugin.endpoint.grpc_target, options=options) as channel:
        from kmsplug._proto.v2 import api_pb2, api_pb2_grpc

        stub = api_pb2_grpc.KeyManagementServiceStub(channel)
        status = await stub.Status(api_pb2.StatusRequest(), timeout=5)
        assert status.healthz == "ok"


def test_process_writes_no_core_dump(plugin: PluginProcess) -> None:
    limits = Path(f"/proc/{plugin.pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]
    assert "core dumps off" in plugin.log() and "not dumpable" in plugin.log()
