"""The Rust keyring and root key as Python sees them (kmsplug._kmsplug)."""

from __future__ import annotations

import copy
import os
import pickle
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kmsplug import _kmsplug as core
from kmsplug._kmsplug import Keyring, RootKey, is_fqdn, peek
from kmsplug.errors import (
    InvalidCiphertext,
    KekNotCached,
    KeyFileError,
    NeedsRotation,
    PlaintextTooLarge,
    UnknownKeyId,
)


@pytest.fixture
def root(tmp_path: Path) -> RootKey:
    return RootKey.create_file(str(tmp_path / "root.key"))


@pytest.fixture
def ring(root: RootKey) -> Keyring:
    keyring = Keyring()
    keyring.rotate_local(root)
    return keyring


# --- module surface ---------------------------------------------------------------------


def test_constants_and_version() -> None:
    assert core.V2_MAX_CIPHERTEXT == 1024
    assert core.V1_MAX_CIPHERTEXT == 65535
    assert core.MAX_KEY_ID == 1024
    assert core.MAX_ANNOTATIONS_BYTES == 32768
    assert core.MAX_PLAINTEXT == 512
    assert core.FORMAT_VERSION == 1
    assert isinstance(core.__version__, str) and core.__version__.count(".") == 2
    assert core.build_profile in {"release", "debug"}


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("local-kek.kms.kubernetes.io", True),
        ("version.encryption.remote.io.", True),
        ("a.b", True),
        ("localhost", False),
        ("kms.example.io/remote-kms-auditid", False),
        ("Upper.case.io", False),
        ("-bad.io", False),
        ("a..b", False),
        ("", False),
        ("a" * 64 + ".io", False),
    ],
)
def test_is_fqdn(name: str, ok: bool) -> None:
    assert is_fqdn(name) is ok


def test_key_material_stays_in_rust(root: RootKey, ring: Keyring) -> None:
    for obj in (root, ring):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
        with pytest.raises(TypeError):
            copy.copy(obj)
        public = [name for name in dir(obj) if not name.startswith("_")]
        assert not any(n in {"key", "kek"} or "bytes" in n for n in public), public
    assert repr(root) == f'RootKey(key_id="{root.key_id}")'
    with pytest.raises(AttributeError):
        root.key_id = "other"  # type: ignore[misc]


# --- root key file ----------------------------------------------------------------------


def test_create_file_makes_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    created = RootKey.create_file(str(path))
    st_ = path.stat()
    assert stat.S_IMODE(st_.st_mode) == 0o600
    assert st_.st_size == 32
    assert RootKey.from_file(path).key_id == created.key_id
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match=r"new\.key"):
        RootKey.create_file(str(path))
    assert path.read_bytes() == before


def test_key_id_changes_with_a_new_key_file(tmp_path: Path) -> None:
    a = RootKey.create_file(str(tmp_path / "a.key"))
    b = RootKey.create_file(str(tmp_path / "b.key"))
    assert a.key_id != b.key_id
    assert a.key_id.startswith("local-") and len(a.key_id) == 38


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_key_file_refuses_wide_permissions(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "open.key"
    path.write_bytes(os.urandom(32))
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=r"open\.key.*mode") as info:
        RootKey.from_file(str(path))
    assert f"{mode:04o}" in str(info.value)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 44, 64])
def test_key_file_refuses_wrong_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "sized.key"
    content = bytes(range(size))
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="exactly 32") as info:
        RootKey.from_file(str(path))
    assert content.hex() not in str(info.value) or size == 0


def test_key_file_missing_and_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"missing\.key"):
        RootKey.from_file(str(tmp_path / "missing.key"))
    tmp_path.chmod(0o700)
    with pytest.raises(KeyFileError, match="regular file"):
        RootKey.from_file(str(tmp_path))


def test_direct_mode(root: RootKey, tmp_path: Path) -> None:
    ct = root.seal_direct(b"d" * 32)
    assert len(ct) == 105
    assert peek(ct) == (2, root.key_id, ct[5 + 38 + 2 :])
    assert root.open_direct(ct) == b"d" * 32
    other = RootKey.create_file(str(tmp_path / "other.key"))
    with pytest.raises(UnknownKeyId):
        other.open_direct(ct)
    with pytest.raises(InvalidCiphertext):
        root.open_direct(ct[:-1])
    with pytest.raises(PlaintextTooLarge):
        root.seal_direct(b"x" * 513)
    with pytest.raises(ValueError, match="empty"):
        root.seal_direct(b"")


# --- keyring ------------------------------------------------------------------------------


def test_empty_keyring_needs_rotation() -> None:
    ring = Keyring()
    assert ring.needs_rotation()
    assert ring.current_key_id is None
    with pytest.raises(NeedsRotation):
        ring.seal(b"dek")


def test_seal_open_and_peek(root: RootKey, ring: Keyring) -> None:
    dek = os.urandom(32)
    ct = ring.seal(dek)
    assert len(ct) == 165 <= core.V2_MAX_CIPHERTEXT
    assert ct[:2] == b"\xc9\x6b"
    mode, key_id, wrapped = peek(ct)
    assert (mode, key_id, len(wrapped)) == (1, root.key_id, 60)
    assert ring.current_key_id == root.key_id
    assert ring.open(ct) == dek
    assert ring.open(ct, root.key_id) == dek
    assert ring.open(bytearray(ct)) == dek
    with pytest.raises(UnknownKeyId):
        ring.open(ct, "another-key")
    with pytest.raises(PlaintextTooLarge):
        ring.seal(b"x" * 513)
    assert ring.open(ring.seal(b"x" * 512)) == b"x" * 512
    with pytest.raises(InvalidCiphertext):
        ring.open(root.seal_direct(dek))


def test_rotation_by_budget(root: RootKey) -> None:
    ring = Keyring(rotate_after_seals=3, max_seals=5)
    ring.rotate_local(root)
    sealed = [ring.seal(bytes([i]) * 32) for i in range(3)]
    assert ring.needs_rotation()
    sealed += [ring.seal(bytes([i]) * 32) for i in range(3, 5)]
    with pytest.raises(NeedsRotation):
        ring.seal(b"over budget")
    assert ring.stats()["seals"] == 5
    first_wrapped = peek(sealed[0])[2]
    ring.rotate_local(root)
    assert not ring.needs_rotation()
    assert peek(ring.seal(b"new"))[2] != first_wrapped
    # Old ciphertexts open from the cache, without the root key.
    for i, ct in enumerate(sealed):
        assert ring.open(ct) == bytes([i]) * 32
    stats = ring.stats()
    assert stats["rotations"] == 2 and stats["cache_len"] == 1 and stats["seals"] == 1


def test_rotation_by_age(root: RootKey) -> None:
    ring = Keyring(max_age_seconds=0.2)
    ring.rotate_local(root)
    assert not ring.needs_rotation()
    time.sleep(0.25)
    assert ring.needs_rotation()
    ring.seal(b"still sealing in the grace period")
    time.sleep(0.2)
    with pytest.raises(NeedsRotation, match="max age"):
        ring.seal(b"past twice the max age")


def test_cache_ttl_expiry(root: RootKey) -> None:
    ring = Keyring(cache_ttl_seconds=0.2)
    ring.rotate_local(root)
    old = ring.seal(b"old")
    ring.rotate_local(root)
    assert ring.open(old) == b"old"
    time.sleep(0.25)
    with pytest.raises(KekNotCached):
        ring.open(old)
    assert ring.stats()["cache_len"] == 0
    ring.unwrap_local(root, old)
    assert ring.open(old) == b"old"


def test_cache_lru_eviction(root: RootKey) -> None:
    ring = Keyring(cache_size=2)
    sealed = []
    for i in range(4):
        ring.rotate_local(root)
        sealed.append(ring.seal(bytes([i])))
    assert ring.stats()["cache_len"] == 2
    assert ring.open(sealed[1]) == b"\x01"  # now most recently used
    ring.rotate_local(root)  # retires KEK 3, evicting KEK 2 (least recently used)
    assert ring.open(sealed[1]) == b"\x01"
    assert ring.open(sealed[3]) == b"\x03"
    for gone in (sealed[0], sealed[2]):
        with pytest.raises(KekNotCached):
            ring.open(gone)
    stats = ring.stats()
    assert stats["cache_misses"] == 2 and stats["cache_hits"] == 3


def test_unwrap_local_checks_ownership(root: RootKey, ring: Keyring, tmp_path: Path) -> None:
    ct = ring.seal(b"dek")
    fresh = Keyring()
    other = RootKey.create_file(str(tmp_path / "other.key"))
    with pytest.raises(UnknownKeyId):
        fresh.unwrap_local(other, ct)
    with pytest.raises(InvalidCiphertext):
        fresh.unwrap_local(root, b"not an envelope")
    fresh.unwrap_local(root, ct)
    assert fresh.open(ct) == b"dek"


def test_remote_kek_install_and_cache_zero_the_bytearray() -> None:
    kek = bytearray(os.urandom(32))
    kept = bytes(kek)
    ring = Keyring()
    ring.install_current("remote-key-v1", b"wrapped-by-remote", kek)
    assert kek == bytearray(32)
    ct = ring.seal(b"dek")
    assert peek(ct)[:2] == (1, "remote-key-v1")
    reader = Keyring()
    with pytest.raises(KekNotCached):
        reader.open(ct)
    again = bytearray(kept)
    reader.cache_kek("remote-key-v1", b"wrapped-by-remote", again)
    assert again == bytearray(32)
    assert reader.open(ct, "remote-key-v1") == b"dek"

    short = bytearray(b"k" * 31)
    with pytest.raises(ValueError, match="32 bytes"):
        reader.cache_kek("remote-key-v1", b"w", short)
    assert short == bytearray(31), "zeroed even when refused"
    with pytest.raises(TypeError):
        reader.cache_kek("remote-key-v1", b"w", kept)  # type: ignore[arg-type]
    for key_id, wrapped in [("", b"w"), ("k" * 256, b"w"), ("k", b""), ("k", b"w" * 1025)]:
        with pytest.raises(ValueError, match=r"key_id|wrapped"):
            reader.install_current(key_id, wrapped, bytearray(32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rotate_after_seals": 0},
        {"rotate_after_seals": 10, "max_seals": 9},
        {"max_seals": 2**32 + 1},
        {"cache_size": 0},
        {"max_age_seconds": 0.0},
        {"cache_ttl_seconds": -1.0},
        {"max_age_seconds": float("nan")},
    ],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Keyring(**kwargs)  # type: ignore[arg-type]


# --- batches -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 64, 65, 300])
def test_batches_round_trip(ring: Keyring, n: int) -> None:
    deks = [os.urandom(32) for _ in range(n)]
    sealed = ring.seal_batch(deks)
    assert len(sealed) == n and len(set(sealed)) == n
    assert ring.open_batch(sealed) == deks
    assert ring.stats()["seals"] == n


def test_seal_batch_is_all_or_nothing(root: RootKey) -> None:
    ring = Keyring(rotate_after_seals=2, max_seals=3)
    ring.rotate_local(root)
    with pytest.raises(NeedsRotation):
        ring.seal_batch([b"a", b"b", b"c", b"d"])
    with pytest.raises(PlaintextTooLarge):
        ring.seal_batch([b"a", b"x" * 513])
    assert ring.stats()["seals"] == 0
    assert len(ring.seal_batch([b"a", b"b", b"c"])) == 3
    assert ring.seal_batch([]) == []


def test_open_batch_returns_per_item_errors(root: RootKey, ring: Keyring) -> None:
    good = ring.seal(b"good")
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    foreign = Keyring()
    foreign.install_current("remote", b"w", bytearray(32))
    uncached = foreign.seal(b"x")
    results = ring.open_batch(
        [good, tampered, b"junk", good, uncached, good],
        [None, None, None, "other", None, root.key_id],
    )
    assert results[0] == b"good" and results[5] == b"good"
    assert [type(r) for r in results[1:5]] == [
        InvalidCiphertext,
        InvalidCiphertext,
        UnknownKeyId,
        KekNotCached,
    ]
    with pytest.raises(ValueError, match="as long as"):
        ring.open_batch([good], [None, None])


def test_concurrent_use_from_threads(ring: Keyring) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                deks = [os.urandom(32) for _ in range(80)]
                assert ring.open_batch(ring.seal_batch(deks)) == deks
                dek = os.urandom(32)
                assert ring.open(ring.seal(dek)) == dek
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ring.stats()["seals"] == 4 * 50 * 81


# --- fuzz ---------------------------------------------------------------------------------

ALLOWED = (InvalidCiphertext, KekNotCached, UnknownKeyId)
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.binary(max_size=2048), key_id=st.none() | st.text(max_size=40))
def test_fuzz_random_bytes(ring: Keyring, root: RootKey, data: bytes, key_id: str | None) -> None:
    for call in (
        lambda: ring.open(data, key_id),
        lambda: ring.unwrap_local(root, data),
        lambda: root.open_direct(data),
        lambda: peek(data),
    ):
        try:
            call()
        except ALLOWED:
            pass
        else:
            # Only a real envelope can get this far; random bytes never do.
            pytest.fail("random bytes were accepted")


@FUZZ
@given(
    dek=st.binary(min_size=1, max_size=512),
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=1, max_size=4
    ),
    cut=st.none() | st.integers(min_value=0),
)
def test_fuzz_tampered_envelopes(
    ring: Keyring, root: RootKey, dek: bytes, flips: list[tuple[int, int]], cut: int | None
) -> None:
    original = ring.seal(dek)
    ct = bytearray(original)
    for position, mask in flips:
        ct[position % len(ct)] ^= mask
    tampered = bytes(ct if cut is None else ct[: cut % len(ct)])
    assume(tampered != original)

    def open_with_cache() -> bytes:
        return ring.open(tampered)

    def open_with_root() -> bytes:
        ring.unwrap_local(root, tampered)
        return ring.open(tampered)

    for call in (open_with_cache, open_with_root):
        try:
            result = call()
        except ALLOWED:
            continue
        pytest.fail(f"tampered ciphertext opened: {result!r}")
    for item in ring.open_batch([tampered]):
        assert isinstance(item, ALLOWED)
