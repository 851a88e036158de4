"""Without building any peer: the peers' ciphertexts open under whatever key_id they were
stored with (ack and aws ignored key_id on Decrypt), kmsplug's own format does not.

The same behaviour with the real plugins is in test_peers_wire.py and tests/e2e/test_swap.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from kmsplug.errors import UnknownKeyId
from kmsplug.sealer import Sealer

from fakes.alibaba_kms import FakeAlibabaKms
from fakes.alibaba_provider import env_for, provider

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> Iterator[FakeAlibabaKms]:
    with FakeAlibabaKms() as kms:
        yield kms


async def test_ack_ciphertexts_open_under_every_key_id_ack_ever_reported(
    fake: FakeAlibabaKms,
) -> None:
    cmk = fake.create_key()
    fake.create_alias("alias/k8s", cmk)
    env = env_for(fake)
    dek = secrets.token_bytes(32)
    # ack, first run with the CMK id, later with the alias: it reported each as key_id
    stored = {
        key_id: await provider(fake, key_id, env, compat_ack=True).wrap(dek)
        for key_id in (cmk, "alias/k8s")
    }
    dropin = Sealer(provider(fake, "alias/k8s", env))
    await dropin.start()
    for key_id, ciphertext in stored.items():
        assert await dropin.open(ciphertext, key_id) == dek
        assert await dropin.open(ciphertext, "a-key-id-ack-never-had") == dek
        assert await dropin.open(ciphertext) == dek  # KMS v1: no key_id at all
    ours, key_id = await dropin.seal(dek)
    assert await dropin.open(ours, key_id) == dek
    with pytest.raises(UnknownKeyId):  # kmsplug's own format keeps the KMS v2 contract
        await dropin.open(ours, "alias/another-key")
