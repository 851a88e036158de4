"""Altered inputs for the tamper and bad-input checks (pure functions, no I/O)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Mapping

Variant = tuple[str, bytes]
AnnotationVariant = tuple[str, dict[str, bytes]]

#: Bytes no protobuf parser accepts, whatever the message type.
MALFORMED_PROTOBUF: tuple[Variant, ...] = (
    ("truncated varint tag", b"\xff"),
    ("wire type 7", b"\x0f"),
    ("length past the end", b"\x0a\xff\xff\xff\x7f\x00"),
)
#: A string field holding invalid UTF-8: proto3 parsers refuse it, a lenient one may not.
INVALID_UTF8 = b"\xc3\x28"


def flipped(ciphertext: bytes) -> list[Variant]:
    """Single bits flipped at the start, quarters, middle and end."""
    n = len(ciphertext)
    positions = sorted({p for p in (0, 1, n // 4, n // 2, 3 * n // 4, n - 2, n - 1) if 0 <= p < n})
    out = []
    for pos in positions:
        for mask in (0x01, 0x80):
            altered = bytearray(ciphertext)
            altered[pos] ^= mask
            out.append((f"bit 0x{mask:02x} of byte {pos}", bytes(altered)))
    return out


def truncated(ciphertext: bytes) -> list[Variant]:
    n = len(ciphertext)
    cuts = [("last byte dropped", ciphertext[:-1]), ("first byte dropped", ciphertext[1:])]
    cuts.append(("first half only", ciphertext[: n // 2]))
    return [(name, cut) for name, cut in cuts if cut and cut != ciphertext]


def extended(ciphertext: bytes) -> list[Variant]:
    return [
        ("one zero byte appended", ciphertext + b"\x00"),
        ("16 random bytes appended", ciphertext + os.urandom(16)),
        ("one zero byte prepended", b"\x00" + ciphertext),
        ("repeated twice", ciphertext + ciphertext),
    ]


def random_like(ciphertext: bytes) -> list[Variant]:
    """Random inputs of the same length, as binary and as base64 text (many plugins'
    ciphertexts are a cloud KMS's base64 blob, which random binary never resembles)."""
    n = max(len(ciphertext), 1)
    text = base64.b64encode(os.urandom(n))[:n]
    return [
        ("random bytes, same length", os.urandom(n)),
        ("random base64, same length", text),
        ("random bytes, 32", os.urandom(32)),
    ]


def altered_annotations(original: Mapping[str, bytes]) -> list[AnnotationVariant]:
    out: list[AnnotationVariant] = [
        ("extra annotation added", {**original, "extra.conformance.example.com": b"1"}),
    ]
    if original:
        out.append(("all annotations dropped", {}))
    for key, value in original.items():
        rest = {k: v for k, v in original.items() if k != key}
        out.append((f"{key} dropped", rest))
        changed = bytes([value[0] ^ 0x01]) + value[1:] if value else b"x"
        out.append((f"{key} value altered", {**rest, key: changed}))
    return out


def other_key_ids(key_id: str) -> list[tuple[str, str]]:
    """key_ids the plugin did not return: a derived one (as after a rotation back to an
    old KEK, where the docs ask for `A_001`), an unrelated one and an empty one."""
    return [
        ("derived key_id", key_id + "_001"),
        ("unrelated key_id", f"conformance-{uuid.uuid4()}"),
        ("empty key_id", ""),
    ]
