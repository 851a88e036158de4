"""The real peers over their sockets, next to kmsplug: what they send and store, exactly.

No apiserver here (tests/e2e/test_swap.py has those): these pin down, call by call, the
formats, key_ids, annotations and version strings kmsplug must match, and that each side
reads what the other wrote.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kmsplug.client import KmsClient
from peers.runners import (
    AckSetup,
    Daemon,
    PeerUnavailable,
    ack_kms_plugin,
    aws_encryption_provider,
    kmsplug_as_ack,
    kmsplug_serve,
    peer_binary,
    vault_kubernetes_kms,
)

from fakes.alibaba_kms import FakeAlibabaKms, make_test_ca

# A cold build of a peer (when `make e2e-deps` has not cached it) takes minutes.
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(1500)]

ACK_ANNOTATIONS = {
    "x-acs-request-id.ack.alibabacloud.com",
    "x-acs-kms-key-version-id.ack.alibabacloud.com",
    "x-acs-kms-region-id.ack.alibabacloud.com",
}


def need(peer: str) -> None:
    try:
        peer_binary(peer)
    except PeerUnavailable as exc:
        pytest.skip(f"{peer} not available: {exc}")


@pytest.fixture
def fake(short_tmp: Path) -> Iterator[FakeAlibabaKms]:
    with FakeAlibabaKms(tls=make_test_ca(short_tmp / "ca")) as kms:
        yield kms


@pytest.fixture
def setup(fake: FakeAlibabaKms, short_tmp: Path) -> AckSetup:
    cmk = fake.create_key()
    fake.create_alias("alias/k8s", cmk)
    access = fake.add_access_key()
    return AckSetup(
        key_id="alias/k8s",
        region=fake.region,
        domain=fake.host,
        access_key_id=access.access_key_id,
        access_key_secret=access.access_key_secret,
        ca_file=short_tmp / "ca" / "ca.crt",
    )


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


async def test_ack_v1_signs_rpc_style_over_https_and_kmsplug_reads_its_blobs(
    fake: FakeAlibabaKms, setup: AckSetup, short_tmp: Path, daemons: list[Daemon]
) -> None:
    need("ack-kms-plugin")
    peer = ack_kms_plugin(short_tmp, short_tmp / "ack.sock", setup).start()
    daemons.append(peer)
    dek = secrets.token_bytes(32)
    async with KmsClient(peer.endpoint, timeout=20) as client:
        assert await client.v1_version() == "v1beta1"
        blob = await client.v1_encrypt(dek)
        assert await client.v1_decrypt(blob) == dek
    # ack stores the CiphertextBlob text as KMS returned it: base64, no prefix
    assert base64.b64encode(base64.b64decode(blob, validate=True)) == blob
    # it called the fake RPC-style, authenticated: Encrypt and Decrypt, nothing else
    assert {action for action, _ in fake.call_counts} == {"Encrypt", "Decrypt"}
    assert fake.count(outcome="Success") == sum(fake.call_counts.values())
    # the drop-in, on another socket with ack's flags and environment, opens it
    dropin = kmsplug_as_ack(short_tmp, short_tmp / "kmsplug.sock", setup).start()
    daemons.append(dropin)
    async with KmsClient(dropin.endpoint, timeout=20) as client:
        assert await client.v1_decrypt(blob) == dek
        ours = await client.v1_encrypt(dek)
    async with KmsClient(peer.endpoint, timeout=20) as client:
        with pytest.raises(grpc.aio.AioRpcError):  # kmsplug's own format: ack cannot
            await client.v1_decrypt(ours)


async def test_ack_v1_with_a_wrong_secret_is_refused_by_the_fake(
    fake: FakeAlibabaKms, setup: AckSetup, short_tmp: Path, daemons: list[Daemon]
) -> None:
    need("ack-kms-plugin")
    wrong = AckSetup(**{**setup.__dict__, "access_key_secret": "not-the-secret"})
    peer = ack_kms_plugin(short_tmp, short_tmp / "ack.sock", wrong).start()  # v1: no check
    daemons.append(peer)
    async with KmsClient(peer.endpoint, timeout=20) as client:
        with pytest.raises(grpc.aio.AioRpcError):
            await client.v1_encrypt(b"x" * 32)
    assert fake.count("Encrypt", "SignatureDoesNotMatch") >= 1
    assert fake.count(outcome="Success") == 0


async def test_ack_v2_key_id_annotations_status_and_the_drop_in(
    fake: FakeAlibabaKms, setup: AckSetup, short_tmp: Path, daemons: list[Daemon]
) -> None:
    """What ack-kms-plugin-v2 reports, and that kmsplug's drop-in reads its ciphertexts
    under every key_id the cluster may hold (--key-id changed from the CMK id to an alias)
    while it still refuses an unknown key_id on its own format."""
    need("ack-kms-plugin-v2")
    cmk = fake.describe(setup.key_id).key_id
    by_cmk = AckSetup(**{**setup.__dict__, "key_id": cmk})
    dek = secrets.token_bytes(32)
    stored = []
    for config in (by_cmk, setup):
        peer = ack_kms_plugin(short_tmp, short_tmp / "ack.sock", config, v2=True).start()
        fake.reset_stats()
        async with KmsClient(peer.endpoint, timeout=20) as client:
            status = await client.v2_status()
            assert (status.version, status.healthz, status.key_id) == ("v2", "ok", config.key_id)
            # every Status is a live Encrypt + Decrypt
            assert (fake.count("Encrypt"), fake.count("Decrypt")) == (1, 1)
            encrypted = await client.v2_encrypt(dek)
            assert encrypted.key_id == config.key_id
            assert set(encrypted.annotations) == ACK_ANNOTATIONS
            assert encrypted.annotations["x-acs-kms-region-id.ack.alibabacloud.com"] == (
                fake.region.encode()
            )
            version = fake.describe(cmk).primary_key_version
            assert (
                encrypted.annotations["x-acs-kms-key-version-id.ack.alibabacloud.com"]
                == version.encode()
            )
            # ack ignores key_id and annotations on Decrypt
            assert await client.v2_decrypt(encrypted.ciphertext, "any-key-id") == dek
        stored.append(encrypted)
        peer.stop()
        with pytest.raises(grpc.aio.AioRpcError):  # not serving any more
            async with KmsClient(peer.endpoint, timeout=2) as client:
                await client.v2_status()

    dropin = kmsplug_as_ack(short_tmp, short_tmp / "ack.sock", setup).start()
    daemons.append(dropin)
    async with KmsClient(dropin.endpoint, timeout=20) as client:
        ours = await client.v2_status()
        assert ours.version == "v2" and ours.healthz == "ok"
        version = fake.describe(cmk).primary_key_version
        assert ours.key_id == f"alibaba:{cmk}:{version}"  # not ack's: a rotation to the apiserver
        for encrypted in stored:  # under the CMK id, then under the alias
            assert await client.v2_decrypt(encrypted.ciphertext, encrypted.key_id) == dek
        mine = await client.v2_encrypt(dek)
        assert mine.key_id == ours.key_id
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.v2_decrypt(mine.ciphertext, "alias/another-key")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # --compat ack: the drop-in writes and reports exactly what ack does
    dropin.stop()
    compat = kmsplug_as_ack(short_tmp, short_tmp / "ack.sock", setup, "--compat", "ack").start()
    daemons.append(compat)
    async with KmsClient(compat.endpoint, timeout=20) as client:
        assert (await client.v2_status()).key_id == setup.key_id
        written = await client.v2_encrypt(dek)
        assert written.key_id == setup.key_id
    compat.stop()
    peer = ack_kms_plugin(short_tmp, short_tmp / "ack.sock", setup, v2=True).start()
    daemons.append(peer)
    async with KmsClient(peer.endpoint, timeout=20) as client:
        assert await client.v2_decrypt(written.ciphertext, written.key_id) == dek


async def test_aws_encryption_provider_format_both_ways(
    short_tmp: Path, daemons: list[Daemon]
) -> None:
    need("aws-encryption-provider")
    from aws.emulator import CREDENTIALS, REGION, LocalKms

    (short_tmp / "aws").mkdir()
    kms = LocalKms(short_tmp / "aws").start()
    try:
        arn = kms.create_key(alias="alias/k8s")
        other = kms.create_key(alias="alias/older")
        dek = secrets.token_bytes(32)
        blobs = {}
        for key in (other, arn):  # the cluster's --key changed once
            peer = aws_encryption_provider(
                short_tmp, short_tmp / "aws.sock", kms_endpoint=kms.endpoint, key=key,
                region=REGION, credentials=CREDENTIALS,
            ).start()  # fmt: skip
            async with KmsClient(peer.endpoint, timeout=20) as client:
                status = await client.v2_status()
                assert (status.version, status.healthz, status.key_id) == ("v2beta1", "ok", key)
                encrypted = await client.v2_encrypt(dek)
                assert encrypted.key_id == key and encrypted.annotations == {}
                assert encrypted.ciphertext[:1] == b"1"
                assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek
            blobs[key] = encrypted.ciphertext
            peer.stop()
        flags = ("--provider", "aws", "--aws-key", arn, "--aws-endpoint", kms.endpoint)
        kmsplug = kmsplug_serve(
            short_tmp, short_tmp / "aws.sock", *flags, "--aws-region", REGION, env=CREDENTIALS
        ).start()
        daemons.append(kmsplug)
        async with KmsClient(kmsplug.endpoint, timeout=20) as client:
            assert (await client.v2_status()).key_id == f"aws:{arn}"
            for key, blob in blobs.items():  # whatever --key it was written under
                assert await client.v2_decrypt(blob, key) == dek
        kmsplug.stop()
        # --compat aws writes what aws-encryption-provider writes, under its key_id.
        compat = kmsplug_serve(
            short_tmp, short_tmp / "aws.sock", *flags, "--aws-region", REGION,
            "--compat", "aws", env=CREDENTIALS,
        ).start()  # fmt: skip
        daemons.append(compat)
        async with KmsClient(compat.endpoint, timeout=20) as client:
            assert (await client.v2_status()).key_id == arn
            written = await client.v2_encrypt(dek)
            assert written.key_id == arn and written.ciphertext[:1] == b"1"
        compat.stop()
        peer = aws_encryption_provider(
            short_tmp, short_tmp / "aws.sock", kms_endpoint=kms.endpoint, key=arn,
            region=REGION, credentials=CREDENTIALS,
        ).start()  # fmt: skip
        daemons.append(peer)
        async with KmsClient(peer.endpoint, timeout=20) as client:
            assert await client.v2_decrypt(written.ciphertext, written.key_id) == dek
    finally:
        kms.stop()


async def test_vault_kubernetes_kms_format_both_ways(
    short_tmp: Path, daemons: list[Daemon]
) -> None:
    need("vault-kubernetes-kms")
    from vault.devserver import transit_server

    with transit_server(short_tmp / "bao", key="kms") as bao:
        dek = secrets.token_bytes(32)
        socket = short_tmp / "vault.sock"
        peer = vault_kubernetes_kms(
            short_tmp, socket, address=bao.address, token=bao.root_token, transit_key="kms"
        ).start()
        async with KmsClient(peer.endpoint, timeout=20) as client:
            status = await client.v2_status()
            assert (status.version, status.healthz, status.key_id) == ("v2", "ok", "1")
            encrypted = await client.v2_encrypt(dek)
            assert encrypted.key_id == "1" and encrypted.ciphertext.startswith(b"vault:v1:")
        peer.stop()
        flags = ("--provider", "vault", "--vault-address", bao.address)
        env = {"VAULT_TOKEN": bao.root_token}
        kmsplug = kmsplug_serve(
            short_tmp, socket, *flags, "--vault-transit-key", "kms", env=env
        ).start()
        daemons.append(kmsplug)
        async with KmsClient(kmsplug.endpoint, timeout=20) as client:
            assert await client.v2_decrypt(encrypted.ciphertext, "1") == dek
        kmsplug.stop()
        # --compat vault writes what vault-kubernetes-kms writes, under its key_id.
        compat = kmsplug_serve(
            short_tmp, socket, *flags, "--vault-transit-key", "kms", "--compat", "vault", env=env
        ).start()
        daemons.append(compat)
        async with KmsClient(compat.endpoint, timeout=20) as client:
            assert (await client.v2_status()).key_id == "1"
            written = await client.v2_encrypt(dek)
            assert written.key_id == "1" and written.ciphertext.startswith(b"vault:v1:")
        compat.stop()
        peer = vault_kubernetes_kms(
            short_tmp, socket, address=bao.address, token=bao.root_token, transit_key="kms"
        ).start()
        daemons.append(peer)
        async with KmsClient(peer.endpoint, timeout=20) as client:
            assert await client.v2_decrypt(written.ciphertext, written.key_id) == dek


def test_kubernetes_kms_builds_and_says_what_it_needs(short_tmp: Path) -> None:
    """Azure's plugin is built, not compared: it needs a Key Vault (no emulator here).
    Without its azure.json it exits at once with a clear error instead of serving."""
    need("kubernetes-kms")
    import subprocess

    binary = peer_binary("kubernetes-kms")
    help_text = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert "keyvault-name" in help_text.stdout + help_text.stderr
    run = subprocess.run(
        [str(binary), "--listen-addr", f"unix://{short_tmp}/azure.sock",
         "--keyvault-name", "kv", "--key-name", "k", "--key-version", "v",
         "--config-file-path", str(short_tmp / "no-azure.json"),
         "--metrics-addr", "0", "--healthz-port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(short_tmp)},
    )  # fmt: skip
    assert run.returncode != 0
    assert "failed to get azure config" in run.stdout + run.stderr
