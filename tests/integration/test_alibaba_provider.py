"""The Alibaba provider against the strict local fake KMS (tests/fakes/alibaba_kms.py).

No Alibaba endpoint is reachable here; the fake verifies the SDK's ACS3-HMAC-SHA256
signatures and STS tokens, enforces key state, spec and quota, and does real AES-GCM.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import grpc
import pytest

from kmsplug.app import build_service
from kmsplug.client import KmsClient
from kmsplug.core import MODE_DIRECT, frame_direct, peek
from kmsplug.errors import InvalidCiphertext, ProviderRefused, ProviderUnavailable, UnknownKeyId
from kmsplug.providers.resilient import ResiliencePolicy, Resilient
from kmsplug.sealer import Sealer

from fakes.alibaba_kms import FakeAlibabaKms
from fakes.alibaba_provider import env_for, provider
from plugin_process import PluginFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> Iterator[FakeAlibabaKms]:
    kms = FakeAlibabaKms().start()
    yield kms
    kms.stop()


async def test_preflight_wrap_unwrap_and_key_id_per_version(fake: FakeAlibabaKms) -> None:
    key = fake.create_key()
    kek = provider(fake, key)
    lines = await kek.preflight()
    version = fake.describe(key).primary_key_version
    assert kek.key_id == f"alibaba:{key}:{version}"
    assert kek.owns(kek.key_id) and not kek.owns(f"{kek.key_id}_001")  # never issued
    assert version in lines[0]
    secret = os.urandom(32)
    wrapped = await kek.wrap(secret)
    assert secret not in base64.b64decode(wrapped)
    assert await kek.unwrap(wrapped) == secret
    new_version = fake.rotate_key(key)
    await kek.refresh()
    assert kek.key_id == f"alibaba:{key}:{new_version}"
    assert await kek.unwrap(wrapped) == secret  # old versions keep decrypting


async def test_alias_works(fake: FakeAlibabaKms) -> None:
    key = fake.create_key()
    fake.create_alias("alias/k8s-secrets", key)
    kek = provider(fake, "alias/k8s-secrets")
    await kek.preflight()
    assert kek.key_id.startswith(f"alibaba:{key}:")


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        (lambda f, k: f.set_key_state(k, "Disabled"), "Enabled"),
        (lambda f, k: f.set_key_state(k, "PendingDeletion"), "Enabled"),
        (lambda f, k: None, "spec"),
    ],
)
async def test_preflight_refuses_unusable_keys(
    fake: FakeAlibabaKms, setup: object, needle: str
) -> None:
    spec = "Aliyun_AES_256" if needle != "spec" else "Aliyun_SM4"
    key = fake.create_key(key_spec=spec)
    setup(fake, key)  # type: ignore[operator]
    with pytest.raises(ProviderRefused, match=needle):
        await provider(fake, key).preflight()


async def test_preflight_explains_missing_permission_and_bad_credentials(
    fake: FakeAlibabaKms,
) -> None:
    key = fake.create_key()
    limited = env_for(fake, allowed_actions=["DescribeKey"])
    with pytest.raises(ProviderRefused, match="kms:Encrypt"):
        await provider(fake, key, limited).preflight()
    wrong = {"ACCESS_KEY_ID": limited["ACCESS_KEY_ID"], "ACCESS_KEY_SECRET": "not-the-secret"}
    with pytest.raises(ProviderRefused, match="credentials") as refused:
        await provider(fake, key, wrong).preflight()
    assert "not-the-secret" not in str(refused.value)
    with pytest.raises(ProviderRefused, match="not found"):
        await provider(fake, "no-such-key").preflight()


async def test_sts_credentials(fake: FakeAlibabaKms) -> None:
    key = fake.create_key()
    sts = fake.issue_sts_token()
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": sts.access_key_id,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": sts.access_key_secret,
        "ALIBABA_CLOUD_SECURITY_TOKEN": sts.security_token,
    }
    kek = provider(fake, key, env)
    await kek.preflight()
    fake.expire_sts_token(sts.security_token)
    with pytest.raises(ProviderUnavailable):
        await kek.wrap(b"k" * 32)


async def test_throttling_is_absorbed_under_quota_and_bounded_above_it(
    fake: FakeAlibabaKms,
) -> None:
    key = fake.create_key()
    fake.set_qps(20, burst=5)
    kek = provider(fake, key, policy=ResiliencePolicy(deadline=2.0, rate=10, burst=3))
    for _ in range(12):  # under the account quota thanks to our own bucket: no error
        await kek.wrap(b"k" * 32)
    assert fake.count(outcome="Rejected.Throttling") == 0
    greedy = provider(fake, key, policy=ResiliencePolicy(deadline=0.5, rate=1000, burst=1000))
    errors = 0

    async def burst() -> None:
        nonlocal errors
        try:
            await greedy.wrap(b"k" * 32)
        except ProviderUnavailable:
            errors += 1

    started = anyio.current_time()
    async with anyio.create_task_group() as tasks:
        for _ in range(60):
            tasks.start_soon(burst)
    assert anyio.current_time() - started < 3.0  # bounded: the deadline, not a pile-up
    assert fake.count(outcome="Rejected.Throttling") > 0
    assert isinstance(greedy, Resilient) and greedy.stats.retries > 0


async def test_hierarchy_costs_a_handful_of_kms_calls(
    fake: FakeAlibabaKms, short_tmp: Path
) -> None:
    key = fake.create_key()
    service = build_service(key_file=short_tmp / "unused.key", writer=provider(fake, key))
    await service.start()
    fake.reset_stats()
    deks = [secrets.token_bytes(32) for _ in range(10_000)]
    sealed = [(await service.encrypt(dek)).ciphertext for dek in deks]
    assert [await service.decrypt(ct) for ct in sealed[:100]] == deks[:100]
    encrypts = fake.count("Encrypt")
    assert encrypts == 0  # the local KEK was wrapped once, at start
    restarted = build_service(key_file=short_tmp / "unused.key", writer=provider(fake, key))
    await restarted.start()
    fake.reset_stats()
    assert [await restarted.decrypt(ct) for ct in sealed[:2000]] == deks[:2000]
    assert fake.count("Decrypt") == 1  # one cold unwrap for every ciphertext of that KEK


async def test_ack_ciphertexts_decrypt_and_compat_mode_round_trips(fake: FakeAlibabaKms) -> None:
    key = fake.create_key()
    env = env_for(fake)
    # What ack-kms-plugin stored: the bare CiphertextBlob text, no encryption context.
    ack = provider(fake, key, env, compat_ack=True)
    dek = secrets.token_bytes(32)
    legacy = await ack.wrap(dek)
    assert legacy == legacy.strip() and base64.b64decode(legacy)
    modern = Sealer(provider(fake, key, env))
    await modern.start()
    assert await modern.open(legacy) == dek  # v1: no key_id
    assert await modern.open(legacy, key) == dek  # v2: ack reported --key-id as key_id
    compat = Sealer(ack, hierarchy=False)
    ciphertext, key_id = await compat.seal(dek)
    assert key_id == key
    assert await ack.unwrap_legacy(ciphertext) == dek  # what ack-kms-plugin would do
    with pytest.raises(InvalidCiphertext):
        await modern.open(base64.b64encode(os.urandom(80)))


async def test_direct_mode_frames_the_blob_and_binds_its_key_id(fake: FakeAlibabaKms) -> None:
    """kmsplug's own direct mode: the CiphertextBlob in a mode-2 frame whose key_id is in
    the EncryptionContext. main wrote the bare blob, the very bytes ack-kms-plugin writes,
    which must open under any key_id (conformance's v2.decrypt.unknown_key_id)."""
    key = fake.create_key()
    kek = provider(fake, key)
    await kek.preflight()
    sealer = Sealer(kek, hierarchy=False)
    dek = secrets.token_bytes(32)
    ciphertext, key_id = await sealer.seal(dek)
    mode, embedded, wrapped = peek(ciphertext)
    assert (mode, embedded, key_id) == (MODE_DIRECT, kek.key_id, kek.key_id)
    assert base64.b64decode(wrapped, validate=True)  # the CiphertextBlob inside
    assert await sealer.open(ciphertext, key_id) == dek
    assert await sealer.open(ciphertext) == dek  # v1: no key_id
    for other in (key, f"alibaba:{key}:another-version"):
        with pytest.raises((InvalidCiphertext, UnknownKeyId)):
            await sealer.open(ciphertext, other)
    # The KMS checks the binding: the blob alone, under our plain context, does not open.
    with pytest.raises(InvalidCiphertext):
        await kek.unwrap(wrapped)
    assert await kek.unwrap_bound(wrapped, key_id) == dek
    # A header relabelled with another key_id this provider owns fails at the KMS.
    with pytest.raises(InvalidCiphertext):
        await sealer.open(frame_direct(key, wrapped), key)


async def test_bare_blob_of_an_older_kmsplug_direct_mode_still_opens(fake: FakeAlibabaKms) -> None:
    """What kmsplug's direct mode wrote before the frame: the bare CiphertextBlob under our
    EncryptionContext, stored under key_id alibaba:<cmk>:<version>. It keeps opening
    through the legacy path, under any key_id (as ack-kms-plugin's blobs)."""
    key = fake.create_key()
    env = env_for(fake)
    kek = provider(fake, key, env)
    await kek.preflight()
    dek = secrets.token_bytes(32)
    older = await kek.wrap(dek)  # wrap itself is unchanged: the bare blob, our context
    assert base64.b64decode(older, validate=True)
    sealer = Sealer(provider(fake, key, env), hierarchy=False)
    assert await sealer.open(older, kek.key_id) == dek
    assert await sealer.open(older) == dek
    assert await sealer.open(older, "an --key-id of long ago") == dek


async def test_plugin_process_with_alibaba_provider(
    fake: FakeAlibabaKms, plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = fake.create_key()
    for name, value in env_for(fake).items():
        monkeypatch.setenv(name, value)
    args = ("--provider", "alibaba", "--key-id", key, "--region", fake.region)
    plugin = plugin_factory(
        *args,
        *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
        *("--health-probe-interval", "3600"),  # no probe inside the counted window
    )
    async with KmsClient(plugin.endpoint, timeout=30) as client:
        status = await client.v2_status()
        assert status.healthz == "ok" and status.key_id.startswith(f"alibaba:{key}:")
        fake.reset_stats()
        dek = secrets.token_bytes(32)
        limiter = anyio.Semaphore(64)

        async def encrypt() -> None:
            async with limiter:
                await client.v1_encrypt(dek)

        async with anyio.create_task_group() as tasks:
            for _ in range(10_000):
                tasks.start_soon(encrypt)
        remote_calls = sum(fake.call_counts.values())
        print(f"10,000 v1 Encrypts cost {remote_calls} Alibaba KMS call(s)")
        assert remote_calls == 0  # the local KEK seals them all: no per-call cost
        assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek
        fake.set_key_state(key, "Disabled")
        sealed = await client.v2_encrypt(dek)  # the local KEK goes on sealing
        assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
    assert os.environ["ACCESS_KEY_SECRET"] not in plugin.log()  # no secret in the log


def test_ack_kms_plugin_command_line_is_a_drop_in(fake: FakeAlibabaKms, short_tmp: Path) -> None:
    """ack-kms-plugin's flags and environment, unchanged, serve and health-check."""
    import subprocess

    from kmsplug.endpoint import Endpoint
    from kmsplug.sockets import is_live

    key = fake.create_key()
    access = fake.add_access_key()
    socket_path = short_tmp / "grpc.sock"
    env = {
        **os.environ,
        "ACK_KMS_REGION_ID": fake.region,
        "ACK_KMS_DOMAIN": fake.host,
        "ACCESS_KEY_ID": access.access_key_id,
        "ACCESS_KEY_SECRET": access.access_key_secret,
        "CREDENTIAL_INTERVAL": "480",
        "KMSPLUG_KMS_PROTOCOL": "http",  # the fake speaks plain HTTP; ack always uses HTTPS
        "KMSPLUG_HTTP_ADDRESS": "127.0.0.1:0",
    }
    ack = [sys.executable, "-c", "from kmsplug.cli.ack import ack_main; ack_main()"]
    log = (short_tmp / "ack.log").open("wb")
    serve = subprocess.Popen(
        [
            *ack,
            f"--path-to-unix-socket={socket_path}",
            f"--key-id={key}",
            "--enable-kms-v1",
            "--gloglevel=2",
            "--logtostderr",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        for _ in range(400):  # up to 20 s
            if is_live(Endpoint(str(socket_path))):
                break
            assert serve.poll() is None, (short_tmp / "ack.log").read_text()
            time.sleep(0.05)
        assert is_live(Endpoint(str(socket_path)))
        health = subprocess.run(
            [*ack, "health", f"--path-to-unix-socket={socket_path}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert health.returncode == 0, health.stderr
    finally:
        serve.terminate()
        serve.wait(30)
    assert serve.returncode == 0
    assert access.access_key_secret not in (short_tmp / "ack.log").read_text()


async def test_sighup_picks_up_a_cmk_rotation_without_dropping_calls(
    fake: FakeAlibabaKms, plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    key = fake.create_key()
    for name, value in env_for(fake).items():
        monkeypatch.setenv(name, value)
    plugin = plugin_factory(
        *("--provider", "alibaba", "--key-id", key, "--region", fake.region),
        *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
    )
    async with KmsClient(plugin.endpoint) as client:
        old = await client.v2_status()
        before = await client.v2_encrypt(b"o" * 32)
        new_version = fake.rotate_key(key)
        failures = 0
        done = anyio.Event()

        async def load() -> None:
            nonlocal failures
            while not done.is_set():
                try:
                    await client.v1_decrypt(await client.v1_encrypt(b"k" * 32))
                except grpc.aio.AioRpcError:
                    failures += 1

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(load)
            plugin.signal(signal.SIGHUP)
            with anyio.fail_after(10):
                while (await client.v2_status()).key_id == old.key_id:  # noqa: ASYNC110 - polling the plugin
                    await anyio.sleep(0.05)
            done.set()
        status = await client.v2_status()
        assert status.key_id == f"alibaba:{key}:{new_version}"
        assert (await client.v2_encrypt(b"n" * 32)).key_id == status.key_id
        assert await client.v2_decrypt(before.ciphertext, before.key_id) == b"o" * 32
        assert failures == 0
    assert plugin.proc is not None and plugin.proc.poll() is None  # SIGHUP did not stop it
