"""The pieces for side-by-side benchmarks: a latency proxy and the real peer behind it.

The latency proxy (tests/aws/latency_proxy.py) sits between a plugin and local-kms, adds a
delay per request, counts remote KMS calls by X-Amz-Target and can enforce a KMS quota.
Its tests run against local-kms and against an upstream of our own that records the raw
request and checks its SigV4 signature. The peer is the real aws-encryption-provider
(tests/peers: built from its pinned source; skipped with the reason where it cannot be).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import boto3  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from peers.runners import Daemon, PeerUnavailable, aws_encryption_provider, peer_binary

from kmsplug.client import KmsClient
from kmsplug.errors import ProviderThrottled, ProviderUnavailable
from kmsplug.providers.aws.kek import build
from kmsplug.providers.aws.settings import AwsSettings
from kmsplug.providers.resilient import ResiliencePolicy, Resilient
from kmsplug.sealer import Sealer

from aws.emulator import CREDENTIALS, REGION, LocalKms
from aws.latency_proxy import LatencyProxy, LatencyProxyProcess
from plugin_process import PluginFactory

pytestmark = pytest.mark.anyio
# A cold build of the peer (in the first peer test's set-up) can outlast the default 300 s.
COLD_BUILD = pytest.mark.timeout(1500)

DELAY_MS = 20
DELAY = DELAY_MS / 1000
FAST = ResiliencePolicy(deadline=2.0, max_attempts=1, backoff_base=0.01)
ENCRYPT, DECRYPT = "TrentService.Encrypt", "TrentService.Decrypt"


@pytest.fixture
def proxy(kms: LocalKms) -> Iterator[LatencyProxy]:
    with LatencyProxy(kms.endpoint, DELAY_MS) as running:
        yield running


# -- an upstream of our own: records what reached it, checks SigV4 ------------------------


@dataclass
class Seen:
    method: str
    raw_path: str
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    peer: Any


@dataclass
class Recorder:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    answer_body: bytes = bytes(range(256))[::-1]


@pytest.fixture
async def upstream() -> AsyncIterator[Recorder]:
    recorder = Recorder()

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        body = await request.read()
        recorder.seen.append(
            Seen(request.method, request.raw_path, list(request.raw_headers), body, peer)
        )
        return web.Response(
            body=recorder.answer_body,
            headers={"X-Echo-Case": "UpPer", "Content-Type": "application/x-amz-json-1.1"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    recorder.url = f"http://127.0.0.1:{port}"
    yield recorder
    await runner.cleanup()


def sigv4_valid(seen: Seen, secret: str) -> bool:
    """Check the request's AWS SigV4 signature over its SignedHeaders, as AWS would."""
    headers: dict[str, list[str]] = {}
    for name, value in seen.raw_headers:
        headers.setdefault(name.decode().lower(), []).append(" ".join(value.decode().split()))
    auth = headers["authorization"][0]
    algorithm, _, rest = auth.partition(" ")
    parts = dict(item.strip().split("=", 1) for item in rest.split(","))
    scope = parts["Credential"].split("/", 1)[1]
    day, region, service, _ = scope.split("/")
    signed = parts["SignedHeaders"]
    path, _, query = seen.raw_path.partition("?")
    canonical = "\n".join(
        [
            seen.method,
            path,
            "&".join(sorted(query.split("&"))) if query else "",
            "".join(f"{name}:{','.join(headers[name])}\n" for name in signed.split(";")),
            signed,
            hashlib.sha256(seen.body).hexdigest(),
        ]
    )
    to_sign = "\n".join(
        [
            algorithm,
            headers["x-amz-date"][0],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret).encode()
    for step in (day, region, service, "aws4_request"):
        key = hmac.new(key, step.encode(), hashlib.sha256).digest()
    mine = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mine, parts["Signature"])


def signed_kms_request(url: str, body: bytes) -> list[tuple[str, str]]:
    """Headers of a KMS Encrypt request signed by botocore for `url` (Host first)."""
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=body,
        headers={
            "X-Amz-Target": ENCRYPT,
            "Content-Type": "application/x-amz-json-1.1",
            "X-Custom-Case": "MiXeD",
        },
    )
    credentials = Credentials(
        CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    )
    SigV4Auth(credentials, "kms", REGION).add_auth(request)
    host = url.removeprefix("http://")
    return [("Host", host), *request.headers.items(), ("Content-Length", str(len(body)))]


async def exchange(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    headers: list[tuple[str, str]],
    body: bytes,
    method: str = "POST",
    path: str = "/",
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP/1.1 exchange written and read as raw bytes on a kept-alive connection."""
    reader, writer = stream
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    answer = [tuple(line.split(": ", 1)) for line in lines if line]
    length = next(int(v) for k, v in answer if k.lower() == "content-length")
    return (
        int(status_line.split()[1]),
        [(k, v) for k, v in answer],
        await reader.readexactly(length),
    )


# -- the latency proxy --------------------------------------------------------------------


async def test_proxy_forwards_signed_requests_byte_exact(upstream: Recorder) -> None:
    body = b'{"KeyId": "alias/k", "Plaintext": "' + bytes(range(256)) * 4 + b'"}'
    with LatencyProxy(upstream.url, DELAY_MS) as proxy:
        headers = signed_kms_request(proxy.url, body)
        headers.insert(3, ("X-Dup", "a"))
        headers.insert(4, ("X-Dup", "b"))  # unsigned, repeated: both kept, in order
        stream = await asyncio.open_connection("127.0.0.1", proxy.proxy.port)
        try:
            started = time.monotonic()
            status, answer, payload = await exchange(
                stream, [*headers, ("Connection", "keep-alive")], body
            )
            elapsed = time.monotonic() - started
            again = await exchange(stream, headers, body)  # the same kept-alive connection
        finally:
            stream[1].close()
        stats = proxy.stats()

    assert status == 200 and again[0] == 200
    assert payload == upstream.answer_body and again[2] == upstream.answer_body
    assert ("X-Echo-Case", "UpPer") in answer
    assert elapsed >= DELAY
    assert stats["counts"] == {ENCRYPT: 2} and stats["connections"] == 1
    assert len(upstream.seen) == 2
    first = upstream.seen[0]
    sent = [(k.encode(), v.encode()) for k, v in headers]
    assert first.raw_headers == sent  # same names, case, order, values; Connection dropped
    assert first.body == body and first.method == "POST" and first.raw_path == "/"
    assert sigv4_valid(first, CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    tampered = Seen(first.method, first.raw_path, first.raw_headers, body[:-1] + b"!", None)
    assert not sigv4_valid(tampered, CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    assert len({seen.peer for seen in upstream.seen}) == 1  # upstream connection reused


async def test_proxy_delays_requests_concurrently_not_one_after_another(
    upstream: Recorder,
) -> None:
    count, delay_ms = 40, 100
    with LatencyProxy(upstream.url, delay_ms) as proxy:
        streams = [
            await asyncio.open_connection("127.0.0.1", proxy.proxy.port) for _ in range(count)
        ]
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(exchange(s, [("Host", "x")], b"", "GET", f"/{i}") for i, s in enumerate(streams))
            )
            elapsed = time.monotonic() - started
        finally:
            for _, writer in streams:
                writer.close()
        stats = proxy.stats()
    assert all(status == 200 for status, _, _ in results)
    assert delay_ms / 1000 <= elapsed < count * delay_ms / 1000 / 4  # serial would be 4 s
    assert stats["max_in_flight"] >= count // 2 and stats["connections"] == count
    assert stats["requests"] == count and stats["counts"]["GET /7"] == 1


async def test_proxy_counts_and_delays_each_kms_call(kms: LocalKms, proxy: LatencyProxy) -> None:
    arn = kms.create_key()
    kek = Resilient(
        build(AwsSettings(key=arn, region=REGION, endpoint_url=proxy.url), CREDENTIALS), FAST
    )
    try:
        proxy.reset()
        dek = secrets.token_bytes(32)
        started = time.monotonic()
        wrapped = await kek.wrap(dek)
        assert time.monotonic() - started >= DELAY
        started = time.monotonic()
        assert await kek.unwrap(wrapped) == dek
        assert time.monotonic() - started >= DELAY
        await kek.refresh()  # DescribeKey
    finally:
        await kek.aclose()
    client = boto3.client(
        "kms",
        endpoint_url=proxy.url,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    assert len(client.generate_data_key(KeyId=arn, KeySpec="AES_256")["Plaintext"]) == 32
    assert proxy.counts() == {
        ENCRYPT: 1,
        DECRYPT: 1,
        "TrentService.DescribeKey": 1,
        "TrentService.GenerateDataKey": 1,
    }
    proxy.reset()
    assert proxy.counts() == {} and proxy.stats()["requests"] == 0


async def test_proxy_cli_process(upstream: Recorder, short_tmp: Path) -> None:
    process = LatencyProxyProcess(upstream.url, 5, log=short_tmp / "proxy.log").start()
    try:
        assert process.url.startswith("http://127.0.0.1:")
        stream = await asyncio.open_connection("127.0.0.1", process.port)
        try:
            for _ in range(3):
                status, _, payload = await exchange(
                    stream,
                    [("Host", "h"), ("X-Amz-Target", DECRYPT), ("Content-Length", "2")],
                    b"{}",
                )
                assert status == 200 and payload == upstream.answer_body
        finally:
            stream[1].close()
        assert process.counts() == {DECRYPT: 3}
        assert process.stats()["connections"] == 1
        process.delay_ms = 0
        assert process.stats()["delay_ms"] == 0
        process.reset()
        assert process.counts() == {}
    finally:
        process.stop()
    assert process.process is None


async def test_kmsplug_behind_the_proxy_makes_no_call_per_request(
    kms: LocalKms,
    proxy: LatencyProxy,
    plugin_factory: PluginFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the benchmark compares: kmsplug wraps its local KEK once, not once per DEK."""
    for name, value in {
        **CREDENTIALS,
        "AWS_REGION": REGION,
        "KMSPLUG_AWS_KEY": kms.create_key(),
        "KMSPLUG_AWS_ENDPOINT": proxy.url,
    }.items():
        monkeypatch.setenv(name, value)
    plugin = plugin_factory("--provider", "aws")
    assert sum(proxy.counts().values()) >= 1  # the start-up checks went through the proxy
    proxy.reset()
    async with KmsClient(plugin.endpoint) as client:
        for _ in range(25):
            sealed = await client.v2_encrypt(b"d" * 32)
            assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == b"d" * 32
            assert await client.v1_decrypt(await client.v1_encrypt(b"e" * 32)) == b"e" * 32
    assert proxy.counts() == {}


# -- the peers behind the proxy ------------------------------------------------------------


@dataclass
class Peer:
    daemon: Daemon
    key_arn: str

    @property
    def endpoint(self) -> Any:
        return self.daemon.endpoint


@pytest.fixture
def peer(kms: LocalKms, proxy: LatencyProxy, short_tmp: Path) -> Iterator[Peer]:
    try:
        peer_binary("aws-encryption-provider")
    except PeerUnavailable as exc:
        pytest.skip(str(exc))
    arn = kms.create_key()
    daemon = aws_encryption_provider(
        short_tmp, short_tmp / "peer.sock", kms_endpoint=proxy.url, key=arn, region=REGION,
        credentials=CREDENTIALS,
    ).start()  # fmt: skip
    proxy.reset()  # its start-up Status cost an Encrypt and a Decrypt
    yield Peer(daemon, arn)
    daemon.stop()


async def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


@COLD_BUILD
async def test_peer_round_trips_with_one_remote_call_each(peer: Peer, proxy: LatencyProxy) -> None:
    async with KmsClient(peer.endpoint) as client:
        cipher, took = await timed(client.v1_encrypt(b"v1 secret"))
        assert took >= DELAY and cipher[:1] == b"1"
        plain, took = await timed(client.v1_decrypt(cipher))
        assert took >= DELAY and plain == b"v1 secret"
        sealed, took = await timed(client.v2_encrypt(b"v2 secret"))
        assert took >= DELAY and sealed.key_id == peer.key_arn and sealed.ciphertext[:1] == b"1"
        plain, took = await timed(client.v2_decrypt(sealed.ciphertext, sealed.key_id))
        assert took >= DELAY and plain == b"v2 secret"
        assert proxy.counts() == {ENCRYPT: 2, DECRYPT: 2}
        for _ in range(10):  # no cache: the same plaintext again costs a call again
            sealed = await client.v2_encrypt(b"v2 secret")
            assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == b"v2 secret"
    assert proxy.counts() == {ENCRYPT: 12, DECRYPT: 12}


@COLD_BUILD
async def test_kmsplug_opens_what_the_peer_wrote(kms: LocalKms, peer: Peer) -> None:
    dek = secrets.token_bytes(32)
    async with KmsClient(peer.endpoint) as client:
        v1 = await client.v1_encrypt(dek)
        v2 = await client.v2_encrypt(dek)
    settings = AwsSettings(key=peer.key_arn, region=REGION, endpoint_url=kms.endpoint)
    kek = Resilient(build(settings, CREDENTIALS), FAST)
    try:
        await kek.preflight()
        sealer = Sealer(kek)
        await sealer.start()
        assert await sealer.open(v1) == dek  # v1: no key_id
        assert await sealer.open(v2.ciphertext, v2.key_id) == dek  # v2: the peer's --key
    finally:
        await kek.aclose()


@COLD_BUILD
async def test_peer_metrics(peer: Peer) -> None:
    async with KmsClient(peer.endpoint) as client:
        await client.v2_encrypt(b"m")
    (port,) = peer.daemon.ports()  # --health-port 127.0.0.1:0, read back from /proc

    def scrape() -> str:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())

    text = await anyio.to_thread.run_sync(scrape)
    assert "aws_encryption_provider_kms_operations_total{" in text
    assert 'operation="encrypt"' in text
    assert "aws_encryption_provider_kms_operation_latency_ms_bucket{" in text


async def test_proxy_quota_throttles_like_the_kms(kms: LocalKms) -> None:
    """Over its quota the proxy answers as AWS KMS does (400 ThrottlingException), without
    forwarding; kmsplug's provider classifies that as throttling."""
    arn = kms.create_key()
    # One call per 20 s, one at a time: a burst of 10 gets exactly one through, however
    # slowly this machine runs it (up to 20 s).
    with LatencyProxy(kms.endpoint, 0, quota_qps=0.05) as limited:
        client = boto3.client(
            "kms",
            endpoint_url=limited.url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=BotoConfig(retries={"total_max_attempts": 1}),
        )
        outcomes = []
        for _ in range(10):
            try:
                client.encrypt(KeyId=arn, Plaintext=b"q")
                outcomes.append("ok")
            except client.exceptions.ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])
        assert outcomes == ["ok"] + ["ThrottlingException"] * 9
        stats = limited.stats()
        assert (stats["throttled"], stats["quota_qps"]) == (9, 0.05)
        assert limited.counts() == {ENCRYPT: 1}  # the throttled ones never reached the KMS
        kek = Resilient(
            build(AwsSettings(key=arn, region=REGION, endpoint_url=limited.url), CREDENTIALS),
            FAST,
        )
        try:
            with pytest.raises(ProviderUnavailable) as refused:
                await kek.wrap(b"k" * 32)
            assert isinstance(refused.value.__cause__, ProviderThrottled)
        finally:
            await kek.aclose()
