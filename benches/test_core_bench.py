"""The Rust core from Python vs `cryptography`'s AESGCM, measured in the same run."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pytest_benchmark.fixture import BenchmarkFixture

from kmsplug._kmsplug import Keyring, RootKey

DEK = secrets.token_bytes(32)


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    key_file: Path = tmp_path_factory.mktemp("bench") / "local.key"
    RootKey.create_file(str(key_file))
    ring = Keyring()
    ring.rotate_local(RootKey.from_file(str(key_file)))
    return ring


@pytest.mark.benchmark(group="seal+open 32 B")
def test_baseline_cryptography_aesgcm(benchmark: BenchmarkFixture) -> None:
    aead = AESGCM(os.urandom(32))
    aad = b"x" * 60

    def seal_open() -> bytes:
        nonce = os.urandom(12)
        return aead.decrypt(nonce, aead.encrypt(nonce, DEK, aad), aad)

    assert benchmark(seal_open) == DEK


@pytest.mark.benchmark(group="seal+open 32 B")
def test_kmsplug_keyring(benchmark: BenchmarkFixture, keyring: Keyring) -> None:
    assert benchmark(lambda: keyring.open(keyring.seal(DEK))) == DEK


@pytest.mark.benchmark(group="seal+open 64 x 32 B")
def test_baseline_kmsplug_one_by_one(benchmark: BenchmarkFixture, keyring: Keyring) -> None:
    deks = [secrets.token_bytes(32) for _ in range(64)]
    assert benchmark(lambda: [keyring.open(keyring.seal(d)) for d in deks]) == deks


@pytest.mark.benchmark(group="seal+open 64 x 32 B")
def test_kmsplug_batch(benchmark: BenchmarkFixture, keyring: Keyring) -> None:
    deks = [secrets.token_bytes(32) for _ in range(64)]
    assert benchmark(lambda: keyring.open_batch(keyring.seal_batch(deks))) == deks


@pytest.fixture(scope="module")
def retired(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keyring, RootKey, bytes]:
    """A DEK sealed under a KEK that has since been rotated out (it waits in the cache)."""
    root = RootKey.create_file(str(tmp_path_factory.mktemp("cache") / "local.key"))
    ring = Keyring()
    ring.rotate_local(root)
    sealed = ring.seal(DEK)
    ring.rotate_local(root)
    return ring, root, sealed


@pytest.mark.benchmark(group="open under a retired KEK")
def test_baseline_unwrap_every_time(
    benchmark: BenchmarkFixture, retired: tuple[Keyring, RootKey, bytes]
) -> None:
    """No KEK cache: every open unwraps the KEK first (locally here; remotely in a peer)."""
    _, root, sealed = retired

    def unwrap_then_open() -> bytes:
        fresh = Keyring(cache_size=1)
        fresh.unwrap_local(root, sealed)
        return fresh.open(sealed)

    assert benchmark(unwrap_then_open) == DEK


@pytest.mark.benchmark(group="open under a retired KEK")
def test_kmsplug_kek_cache_hit(
    benchmark: BenchmarkFixture, retired: tuple[Keyring, RootKey, bytes]
) -> None:
    ring, _, sealed = retired
    assert benchmark(lambda: ring.open(sealed)) == DEK
    assert ring.stats()["cache_hits"] > 0
