"""Drop-in swaps between the real peer plugins and kmsplug, on a real kube-apiserver + etcd.

For each peer and KMS API: the peer (built from its pinned source, tests/peers) serves the
socket and the apiserver stores a few hundred Secrets through it; then, on the same socket
with the same EncryptionConfiguration:

1. rollback first: kmsplug in the write mode the peer can read (`--compat ack`, `--compat
   aws`, `--compat vault`: the peer's own format and key_id) writes more Secrets; the real
   peer comes back and reads them all;
2. kmsplug in its default mode: every Secret reads back exact after an apiserver restart
   (so every read goes through kmsplug), new writes carry kmsplug's key_id and format,
   `kmsplug migrate` then `kmsplug verify` show every Secret moved.

A peer that cannot be built here (no shared/peers beside the checkout, or a refused build
step) skips with the reason. KMSPLUG_SWAP_SECRETS sets how many Secrets the peer stores.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
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
from test_kms_e2e import kmsplug_cli, make_secrets, read_back

from kmsplug._proto.v2.encrypted_object_pb2 import EncryptedObject
from kmsplug.client import KmsClient
from kmsplug.core import peek
from kmsplug.encryption_config import encryption_configuration
from kmsplug.endpoint import Endpoint
from kmsplug.errors import InvalidCiphertext
from kmsplug.providers.alibaba.kek import looks_like_ack_ciphertext

from bed import ClusterBed
from configs import write_config

# Four apiserver restarts each, and a cold build of the peer if the cache lacks it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

COUNT = int(os.environ.get("KMSPLUG_SWAP_SECRETS", "200"))
NAME = "grpc-kms-provider"  # the provider name in ack-kms-plugin's own manifests


def need(peer: str) -> None:
    try:
        peer_binary(peer)
    except PeerUnavailable as exc:
        pytest.skip(f"{peer} not available: {exc}")


def edeks(
    bed: ClusterBed, names: Iterator[str] | list[str], api: str, provider: str = NAME
) -> list[tuple[str, bytes]]:
    """(key_id, the plugin's ciphertext) of each stored Secret, from etcd's raw bytes."""
    prefix = f"k8s:enc:kms:{api}:{provider}:".encode()
    found = []
    for name in names:
        raw = bed.raw(f"/registry/secrets/default/{name}")
        assert raw.startswith(prefix), raw[:48]
        body = raw[len(prefix) :]
        if api == "v2":
            stored = EncryptedObject()
            stored.ParseFromString(body)
            found.append((stored.keyID, bytes(stored.encryptedDEKSource)))
        else:
            length = int.from_bytes(body[:2], "big")
            found.append(("", body[2 : 2 + length]))
    return found


def is_kmsplug_format(ciphertext: bytes) -> bool:
    try:
        peek(ciphertext)
    except InvalidCiphertext:
        return False
    return True


def status_key_id(endpoint: Endpoint) -> str:
    async def ask() -> str:
        async with KmsClient(endpoint, timeout=10) as client:
            return (await client.v2_status()).key_id

    return asyncio.run(ask())


@dataclass
class Swap:
    """One peer on one KMS API, and how kmsplug replaces it."""

    api: str  # "v1" or "v2"
    socket: Path
    start_peer: Callable[[], Daemon]
    start_kmsplug: Callable[..., Daemon]  # (*extra serve flags) -> a started kmsplug
    is_peer_format: Callable[[bytes], bool]
    compat_args: tuple[str, ...]  # kmsplug's write mode the peer can read
    peer_key_ids: frozenset[str] = frozenset()  # v2: the key_ids the peer reports


def run_swap(
    swap: Swap,
    bed_factory: Callable[..., ClusterBed],
    config: Path,
    stored_before: dict[str, str] | None = None,
    bed: ClusterBed | None = None,
) -> None:
    gates = ("KMSv1=true",) if swap.api == "v1" else ()
    peer = swap.start_peer()
    if bed is None:
        bed = bed_factory(config, feature_gates=gates)
    else:
        bed.restart_apiserver()
    old = {**(stored_before or {}), **make_secrets(bed, COUNT, "peer")}
    for key_id, ciphertext in edeks(bed, list(old), swap.api):
        assert swap.is_peer_format(ciphertext), ciphertext[:40]
        if swap.api == "v2":
            assert key_id in swap.peer_key_ids
    assert peer.stop() is not None

    # 1. kmsplug in the peer's own format, then back to the peer: a rollback keeps working.
    compat = swap.start_kmsplug(*swap.compat_args)
    bed.restart_apiserver()
    read_back(bed, old)
    written = make_secrets(bed, 20, "compat")
    for key_id, ciphertext in edeks(bed, list(written), swap.api):
        assert swap.is_peer_format(ciphertext), ciphertext[:40]
        if swap.api == "v2":  # the peer's own key_id, as the peer would have stored
            assert key_id in swap.peer_key_ids, key_id
    compat.stop()
    peer = swap.start_peer()
    bed.restart_apiserver()
    read_back(bed, {**old, **written})  # the real peer reads what kmsplug wrote
    assert peer.stop() is not None

    # 2. kmsplug in its own format: reads everything, writes its key_id, migrates.
    kmsplug = swap.start_kmsplug()
    bed.restart_apiserver()
    everything = {**old, **written}
    read_back(bed, everything)
    key_id = status_key_id(kmsplug.endpoint)
    new = make_secrets(bed, 5, "kmsplug")
    for stored_key_id, ciphertext in edeks(bed, list(new), swap.api):
        assert is_kmsplug_format(ciphertext)
        if swap.api == "v2":
            assert stored_key_id == key_id
    everything.update(new)
    provider = NAME
    if swap.api == "v1":
        # A KMS v1 value names no key: the apiserver rewrites it only when a provider other
        # than the first read it. So kmsplug gets a name of its own, listed first, and the
        # old name stays second, on the same socket, to read what is not rewritten yet.
        provider = "kmsplug"
        bed.restart_apiserver(_config(config.parent, swap.socket, "v1", "kmsplug", NAME))
        read_back(bed, everything)
    migrated = kmsplug_cli("migrate", "--kubeconfig", str(bed.kubeconfig))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    expect = ("--expect-key-id", key_id, "--expect-provider", provider)
    report = kmsplug_cli("verify", "--etcd", bed.etcd_url, *expect, "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    document = json.loads(report.stdout)
    assert document["total"] == len(everything) and document["unexpected"] == []
    # The compat modes report the peer's key_id, not kmsplug's: everything is stale.
    assert all(is_kmsplug_format(ct) for _, ct in edeks(bed, list(everything), swap.api, provider))
    read_back(bed, everything)
    kmsplug.stop()


# -- ack-kms-plugin ------------------------------------------------------------------------


@pytest.fixture
def alibaba(short_tmp: Path) -> Iterator[tuple[object, AckSetup, str]]:
    """The Alibaba fake over HTTPS (a test CA), a CMK with an alias, ack's settings."""
    from fakes.alibaba_kms import FakeAlibabaKms, make_test_ca

    with FakeAlibabaKms(tls=make_test_ca(short_tmp / "ca")) as fake:
        cmk = fake.create_key()
        fake.create_alias("alias/k8s-secrets", cmk)
        access = fake.add_access_key()
        setup = AckSetup(
            key_id="alias/k8s-secrets",
            region=fake.region,
            domain=fake.host,
            access_key_id=access.access_key_id,
            access_key_secret=access.access_key_secret,
            ca_file=short_tmp / "ca" / "ca.crt",
        )
        yield fake, setup, cmk


def test_ack_kms_plugin_v1_swap(
    alibaba: tuple[object, AckSetup, str], bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    need("ack-kms-plugin")
    _, setup, _ = alibaba
    socket = short_tmp / "kms.sock"
    swap = Swap(
        api="v1",
        socket=socket,
        start_peer=lambda: ack_kms_plugin(short_tmp, socket, setup).start(),
        start_kmsplug=lambda *extra: kmsplug_as_ack(short_tmp, socket, setup, *extra).start(),
        is_peer_format=looks_like_ack_ciphertext,
        compat_args=("--compat", "ack"),
    )
    config = _config(short_tmp, socket, "v1")
    run_swap(swap, bed_factory, config)


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_ack_kms_plugin_v2_swap(
    api: str,
    alibaba: tuple[object, AckSetup, str],
    bed_factory: Callable[..., ClusterBed],
    short_tmp: Path,
) -> None:
    """The newest ack (KMS v2; v1 with --enable-kms-v1). Its cluster first ran with the
    CMK id as --key-id, later with an alias: objects are stored under both key_id strings,
    and the drop-in (configured with the alias) must read both."""
    need("ack-kms-plugin-v2")
    _, setup, cmk = alibaba
    socket = short_tmp / "kms.sock"
    v1 = api == "v1"
    earlier = AckSetup(**{**setup.__dict__, "key_id": cmk})
    config = _config(short_tmp, socket, api)
    gates = ("KMSv1=true",) if v1 else ()
    first = ack_kms_plugin(short_tmp, socket, earlier, v2=True, enable_v1=v1).start()
    bed = bed_factory(config, feature_gates=gates)
    under_cmk_id = make_secrets(bed, COUNT // 4, "cmk-id")
    if not v1:
        assert {key_id for key_id, _ in edeks(bed, list(under_cmk_id), api)} == {cmk}
    first.stop()
    swap = Swap(
        api=api,
        socket=socket,
        start_peer=lambda: ack_kms_plugin(short_tmp, socket, setup, v2=True, enable_v1=v1).start(),
        start_kmsplug=lambda *extra: kmsplug_as_ack(
            short_tmp, socket, setup, *extra, enable_v1=v1
        ).start(),
        is_peer_format=looks_like_ack_ciphertext,
        compat_args=("--compat", "ack"),
        peer_key_ids=frozenset({cmk, setup.key_id}),
    )
    run_swap(swap, bed_factory, config, stored_before=under_cmk_id, bed=bed)


# -- aws-encryption-provider ---------------------------------------------------------------


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_aws_encryption_provider_swap(
    api: str, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    need("aws-encryption-provider")
    from aws.emulator import CREDENTIALS, REGION, LocalKms

    (short_tmp / "aws").mkdir()
    kms = LocalKms(short_tmp / "aws").start()
    try:
        arn = kms.create_key(alias="alias/k8s")
        socket = short_tmp / "kms.sock"
        swap = Swap(
            api=api,
            socket=socket,
            start_peer=lambda: aws_encryption_provider(
                short_tmp,
                socket,
                kms_endpoint=kms.endpoint,
                key=arn,
                region=REGION,
                credentials=CREDENTIALS,
            ).start(),
            start_kmsplug=lambda *extra: kmsplug_serve(
                short_tmp,
                socket,
                *("--provider", "aws", "--aws-key", arn, "--aws-endpoint", kms.endpoint),
                *("--aws-region", REGION, *extra),
                env=CREDENTIALS,
            ).start(),
            is_peer_format=lambda ct: ct[:1] == b"1" and not is_kmsplug_format(ct),
            compat_args=("--compat", "aws"),
            peer_key_ids=frozenset({arn}),
        )
        run_swap(swap, bed_factory, _config(short_tmp, socket, api))
    finally:
        kms.stop()


# -- vault-kubernetes-kms ------------------------------------------------------------------


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_vault_kubernetes_kms_swap(
    api: str, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    need("vault-kubernetes-kms")
    from vault.devserver import transit_server

    with transit_server(short_tmp / "bao", key="kms") as bao:
        socket = short_tmp / "kms.sock"
        swap = Swap(
            api=api,
            socket=socket,
            start_peer=lambda: vault_kubernetes_kms(
                short_tmp, socket, address=bao.address, token=bao.root_token, transit_key="kms"
            ).start(),
            start_kmsplug=lambda *extra: kmsplug_serve(
                short_tmp,
                socket,
                *("--provider", "vault", "--vault-address", bao.address),
                *("--vault-transit-key", "kms", *extra),
                env={"VAULT_TOKEN": bao.root_token},
            ).start(),
            is_peer_format=lambda ct: ct.startswith(b"vault:v1:"),
            compat_args=("--compat", "vault"),
            peer_key_ids=frozenset({"1"}),  # transit's latest_version
        )
        run_swap(swap, bed_factory, _config(short_tmp, socket, api))


def _config(directory: Path, socket: Path, api: str, *names: str) -> Path:
    """The peer's EncryptionConfiguration: a kms provider per name (default: NAME), each on
    `socket`, then identity."""
    endpoint = Endpoint(path=str(socket))
    documents = [
        encryption_configuration(endpoint, api=api, name=name) for name in names or (NAME,)
    ]
    document = documents[0]
    document["resources"][0]["providers"] = [
        *(doc["resources"][0]["providers"][0] for doc in documents),
        {"identity": {}},
    ]
    return write_config(directory / f"encryption-{api}-{'-'.join(names or (NAME,))}.yaml", document)
