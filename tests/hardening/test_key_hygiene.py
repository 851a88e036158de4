"""Issue 12, point 7: key hygiene.

The local root key seals with random 96-bit nonces and no counter, so in direct mode
(every DEK and every health probe sealed under it) it gets the seal budget a local KEK
has: at the budget sealing is refused with a clear error and the health probe fails;
opening goes on. A local KEK made for a remote provider exists in Python as one
bytearray, handed to the provider's wrap as it is and wiped after.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import grpc
import pytest

from kmsplug.client import KmsClient
from kmsplug.core import RootKey, RotationPolicy
from kmsplug.providers.base import KekProvider, Secret
from kmsplug.sealer import Sealer

from plugin_process import PluginFactory

pytestmark = pytest.mark.anyio

BUDGET = 40


def healthz(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_direct_mode_root_key_stops_sealing_at_its_budget(
    plugin_factory: PluginFactory,
) -> None:
    """main sealed without limit under the root key in direct mode: all BUDGET + 1
    Encrypts succeeded and the probe stayed healthy."""
    plugin = plugin_factory(
        "--mode", "direct", "--kek-max-seals", str(BUDGET), "--health-probe-interval", "1"
    )
    sealed: list[tuple[bytes, bytes]] = []
    refusal: grpc.aio.AioRpcError | None = None
    async with KmsClient(plugin.endpoint, timeout=30) as client:
        for n in range(BUDGET + 1):  # the probes take seals too: the budget ends sooner
            dek = n.to_bytes(32, "big")
            try:
                sealed.append((dek, await client.v1_encrypt(dek)))
            except grpc.aio.AioRpcError as exc:
                refusal = exc
                break
        assert refusal is not None, f"{len(sealed)} seals, none refused"
        assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "seal budget is spent" in (refusal.details() or "")
        assert sealed, "not one seal before the budget was spent"
        for dek, ciphertext in sealed:  # opening goes on
            assert await client.v1_decrypt(ciphertext) == dek
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the next probe sees it
            status, text = healthz(plugin.http_url)
            if status == 503:
                break
            await anyio.sleep(0.2)
        assert (status, text.strip()) == (503, "local KEK unavailable: SealBudgetSpent")
        assert (await client.v2_status()).healthz != "ok"
    assert "seal budget" in plugin.log()  # the soft limit's warning, then the refusal


class RecordingKek(KekProvider):
    """A provider that wraps under a real RootKey and keeps what wrap was handed, to see
    whether the sealer gave it a wipeable buffer and wiped it."""

    def __init__(self, key_file: Path) -> None:
        self.root = RootKey.create_file(key_file)
        self.handed: list[Secret] = []

    @property
    def key_id(self) -> str:
        return "recording"

    async def wrap(self, plaintext: Secret) -> bytes:
        self.handed.append(plaintext)
        return self.root.seal_direct(plaintext)

    async def unwrap(self, wrapped: bytes) -> bytes:
        return self.root.open_direct(wrapped)


async def test_a_local_kek_reaches_wrap_as_one_bytearray_wiped_after(tmp_path: Path) -> None:
    """main handed wrap `bytes(kek)`: an immutable copy of the local KEK, never wiped."""
    provider = RecordingKek(tmp_path / "root.key")
    sealer = Sealer(provider, policy=RotationPolicy())
    await sealer.start()
    (handed,) = provider.handed
    assert isinstance(handed, bytearray), type(handed)
    assert len(handed) == 32 and handed == bytearray(32)  # wiped once installed
    ciphertext, key_id = await sealer.seal(b"a DEK")
    assert key_id == "recording"
    assert await sealer.open(ciphertext, key_id) == b"a DEK"  # the KEK itself was intact
