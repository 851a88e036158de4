"""The Rust core against an independent implementation of format v1 on `cryptography`.

If these disagree, one of the two misreads rust/kmsplug-core/FORMAT.md. The golden
vectors are checked in and never regenerated (tests/vectors/README.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsplug._kmsplug import FORMAT_VERSION, Keyring, RootKey, peek
from kmsplug.errors import KekNotCached

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "envelope-v1.json"

MAGIC = b"\xc9\x6b"
HIERARCHY = 1
DIRECT = 2


# --- format v1, written from FORMAT.md ------------------------------------------------


def local_key_id(root: bytes) -> str:
    digest = hmac.new(root, b"kmsplug local key id v1", hashlib.sha256).digest()
    return "local-" + digest[:16].hex()


def prefix(mode: int, key_id: str, wrapped_len: int) -> bytes:
    kid = key_id.encode()
    return MAGIC + bytes([FORMAT_VERSION, mode, len(kid)]) + kid + struct.pack(">H", wrapped_len)


def wrap_local_kek(root: bytes, kek: bytes, nonce: bytes) -> bytes:
    aad = b"kmsplug local-kek v1|" + local_key_id(root).encode()
    return nonce + AESGCM(root).encrypt(nonce, kek, aad)


def seal_hierarchy(key_id: str, wrapped: bytes, kek: bytes, nonce: bytes, dek: bytes) -> bytes:
    header = prefix(HIERARCHY, key_id, len(wrapped)) + wrapped
    return header + nonce + AESGCM(kek).encrypt(nonce, dek, header)


def seal_direct_local(root: bytes, nonce: bytes, dek: bytes) -> bytes:
    head = prefix(DIRECT, local_key_id(root), 12 + len(dek) + 16)
    return head + nonce + AESGCM(root).encrypt(nonce, dek, head)


@dataclass(frozen=True)
class Parsed:
    mode: int
    key_id: str
    wrapped: bytes
    prefix: bytes
    header: bytes
    body: bytes


def parse(ct: bytes) -> Parsed:
    assert ct[:2] == MAGIC and ct[2] == FORMAT_VERSION
    mode, k = ct[3], ct[4]
    key_id = ct[5 : 5 + k].decode()
    (w,) = struct.unpack(">H", ct[5 + k : 7 + k])
    end = 7 + k + w
    return Parsed(mode, key_id, ct[7 + k : end], ct[: 7 + k], ct[:end], ct[end:])


def open_hierarchy(ct: bytes, kek: bytes) -> bytes:
    env = parse(ct)
    assert env.mode == HIERARCHY
    return AESGCM(kek).decrypt(env.body[:12], env.body[12:], env.header)


def unwrap_local_kek(root: bytes, wrapped: bytes) -> bytes:
    aad = b"kmsplug local-kek v1|" + local_key_id(root).encode()
    return AESGCM(root).decrypt(wrapped[:12], wrapped[12:], aad)


# --- (a) the golden vectors re-derived -----------------------------------------------


def load_vectors() -> list[dict[str, Any]]:
    doc = json.loads(VECTORS.read_text())
    assert doc["format_version"] == 1
    vectors: list[dict[str, Any]] = doc["vectors"]
    return vectors


def vector_ids() -> list[str]:
    return [v["name"] for v in load_vectors()]


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def test_vector_set_is_complete() -> None:
    vectors = load_vectors()
    by_mode = {m: [v for v in vectors if v["mode"] == m] for m in (HIERARCHY, DIRECT)}
    sizes = {len(h(v["plaintext"])) for v in by_mode[HIERARCHY]}
    assert {1, 4, 32, 512} <= sizes
    assert by_mode[DIRECT]


@pytest.mark.parametrize("vector", load_vectors(), ids=vector_ids())
def test_vector_rederived_with_cryptography(vector: dict[str, Any]) -> None:
    plaintext, ciphertext, nonce = (
        h(vector["plaintext"]),
        h(vector["ciphertext"]),
        h(vector["nonce"]),
    )
    key_id = vector["key_id"]
    if vector["root_key"] is not None:
        assert key_id == local_key_id(h(vector["root_key"]))
    if vector["mode"] == HIERARCHY:
        kek = h(vector["local_kek"])
        wrapped = h(vector["wrapped_kek"])
        if vector["root_key"] is not None:
            root = h(vector["root_key"])
            assert wrap_local_kek(root, kek, h(vector["wrap_nonce"])) == wrapped
            assert unwrap_local_kek(root, wrapped) == kek
        assert seal_hierarchy(key_id, wrapped, kek, nonce, plaintext) == ciphertext
        assert open_hierarchy(ciphertext, kek) == plaintext
    else:
        assert seal_direct_local(h(vector["root_key"]), nonce, plaintext) == ciphertext
    mode, embedded, _ = peek(ciphertext)
    assert (mode, embedded) == (vector["mode"], key_id)


@pytest.mark.parametrize("vector", load_vectors(), ids=vector_ids())
def test_vector_opens_in_the_extension(vector: dict[str, Any], tmp_path: Path) -> None:
    plaintext, ciphertext = h(vector["plaintext"]), h(vector["ciphertext"])
    ring = Keyring()
    if vector["root_key"] is None:
        ring.cache_kek(
            vector["key_id"], h(vector["wrapped_kek"]), bytearray(h(vector["local_kek"]))
        )
        assert ring.open(ciphertext, vector["key_id"]) == plaintext
        return
    key_file = tmp_path / "root.key"
    key_file.write_bytes(h(vector["root_key"]))
    key_file.chmod(0o600)
    root = RootKey.from_file(str(key_file))
    assert root.key_id == vector["key_id"]
    if vector["mode"] == DIRECT:
        assert root.open_direct(ciphertext) == plaintext
    else:
        ring.unwrap_local(root, ciphertext)
        assert ring.open(ciphertext, vector["key_id"]) == plaintext


# --- (b) cryptography writes, the extension reads ----------------------------------------


@pytest.fixture
def root_file(tmp_path: Path) -> tuple[bytes, RootKey]:
    raw = os.urandom(32)
    path = tmp_path / "root.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return raw, RootKey.from_file(str(path))


@pytest.mark.parametrize("size", [1, 4, 32, 255, 512])
def test_extension_opens_what_cryptography_sealed(
    root_file: tuple[bytes, RootKey], size: int
) -> None:
    raw, root = root_file
    assert root.key_id == local_key_id(raw)
    kek, dek = os.urandom(32), os.urandom(size)
    wrapped = wrap_local_kek(raw, kek, os.urandom(12))
    ct = seal_hierarchy(root.key_id, wrapped, kek, os.urandom(12), dek)
    ring = Keyring()
    with pytest.raises(KekNotCached):
        ring.open(ct)
    ring.unwrap_local(root, ct)
    assert ring.open(ct, root.key_id) == dek
    assert root.open_direct(seal_direct_local(raw, os.urandom(12), dek)) == dek


# --- (c) the extension writes, cryptography reads ----------------------------------------


def test_cryptography_opens_what_the_extension_sealed(root_file: tuple[bytes, RootKey]) -> None:
    raw, root = root_file
    ring = Keyring()
    ring.rotate_local(root)
    for size in (1, 32, 512):
        dek = os.urandom(size)
        ct = ring.seal(dek)
        env = parse(ct)
        assert (env.mode, env.key_id, len(env.wrapped)) == (HIERARCHY, root.key_id, 60)
        assert len(ct) == 5 + 38 + 2 + 60 + 12 + size + 16
        kek = unwrap_local_kek(raw, env.wrapped)
        assert open_hierarchy(ct, kek) == dek
        # The header is authenticated: another key_id or KEK does not open.
        with pytest.raises(InvalidTag):
            AESGCM(kek).decrypt(env.body[:12], env.body[12:], env.header[:-1] + b"\x00")

    direct = root.seal_direct(b"seed")
    env = parse(direct)
    assert env.mode == DIRECT and env.body == b""
    assert AESGCM(raw).decrypt(env.wrapped[:12], env.wrapped[12:], env.prefix) == b"seed"


def test_remote_kek_path_matches_cryptography() -> None:
    kek = os.urandom(32)
    ring = Keyring()
    ring.install_current(
        "projects/p/locations/l/keyRings/r/cryptoKeys/k", b"\x01" * 300, bytearray(kek)
    )
    ct = ring.seal(b"x" * 32)
    assert open_hierarchy(ct, kek) == b"x" * 32
    assert parse(ct).wrapped == b"\x01" * 300
