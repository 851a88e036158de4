"""The two ways a token key wraps a secret, and the blob that carries the result.

- `aes-gcm` (default): CKM_AES_GCM, a 12-byte IV drawn from the token's RNG, a 16-byte
  tag, AAD = the key_id bytes of the HSM key used;
- `aes-key-wrap`: CKM_AES_KEY_WRAP_PAD (C_WrapKey of a session-only generic secret holding
  length(2) || secret || zero padding), for HSMs without GCM. SoftHSM2 implements that
  mechanism as RFC 5649 (KWP). It is deterministic: the same secret wraps the same way.

Wrapped blob: 1 mechanism byte (1 = GCM, 2 = key wrap) || the key's 8-byte fingerprint ||
GCM: iv(12) || ct || tag(16); key wrap: the token's output. The fingerprint tells unwrap
which key of the label to use, so old keys keep opening what they wrapped.

Every function here runs in a worker thread, on a session of the pool.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, cast

from kmsplug.core import MAX_PLAINTEXT
from kmsplug.errors import InvalidCiphertext
from kmsplug.providers.pkcs11.session import Session

TAG_GCM = 1
TAG_KEY_WRAP = 2
FINGERPRINT_BYTES = 8
IV_BYTES = 12
GCM_TAG_BYTES = 16
#: The largest secret wrapped: what the sealer seals at most.
MAX_WRAP_INPUT = MAX_PLAINTEXT
_PROBE = b"kmsplug-pkcs11-health-probe-0001"
_PROBE_AAD = b"kmsplug-probe"


def tag_of(mechanism: str) -> int:
    """The blob's mechanism byte for a `--pkcs11-mechanism` value."""
    return TAG_GCM if mechanism == "aes-gcm" else TAG_KEY_WRAP


def compose(tag: int, fingerprint: bytes, body: bytes) -> bytes:
    return bytes([tag]) + fingerprint + body


def parse(wrapped: bytes) -> tuple[int, bytes, bytes]:
    """(mechanism byte, key fingerprint, body) of a blob; InvalidCiphertext if malformed."""
    head = 1 + FINGERPRINT_BYTES
    if len(wrapped) <= head or wrapped[0] not in (TAG_GCM, TAG_KEY_WRAP):
        raise InvalidCiphertext
    tag, fingerprint, body = wrapped[0], wrapped[1:head], wrapped[head:]
    if tag == TAG_GCM and len(body) < IV_BYTES + GCM_TAG_BYTES + 1:
        raise InvalidCiphertext
    return tag, fingerprint, body


def seal(current: Session, key: Any, tag: int, plaintext: bytes, aad: bytes) -> bytes:
    """The body of a blob: `plaintext` wrapped by `key` with the mechanism of `tag`."""
    if tag == TAG_GCM:
        return gcm_seal(current, key, plaintext, aad)
    return key_wrap(current, key, plaintext)


def open_body(current: Session, key: Any, tag: int, body: bytes, aad: bytes) -> bytes:
    """Invert `seal`."""
    if tag == TAG_GCM:
        return gcm_open(current, key, body, aad)
    return key_unwrap(current, key, body)


def round_trip_works(current: Session, key: Any, tag: int) -> bool:
    """Whether `key` opens what it just sealed: tells a blob's fault (a tampered blob)
    from the token's when the token answers with a generic error."""
    sealed = seal(current, key, tag, _PROBE, _PROBE_AAD)
    return open_body(current, key, tag, sealed, _PROBE_AAD) == _PROBE


def gcm_seal(current: Session, key: Any, plaintext: bytes, aad: bytes) -> bytes:
    from pkcs11 import GCMParams, Mechanism

    iv = bytes(current.session.generate_random(IV_BYTES * 8))
    params = GCMParams(iv, aad, GCM_TAG_BYTES * 8)
    sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    return iv + bytes(cast(bytes, sealed))


def gcm_open(current: Session, key: Any, body: bytes, aad: bytes) -> bytes:
    from pkcs11 import GCMParams, Mechanism

    del current
    iv, sealed = body[:IV_BYTES], body[IV_BYTES:]
    params = GCMParams(iv, aad, GCM_TAG_BYTES * 8)
    return bytes(
        cast(bytes, key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params))
    )


_SESSION_SECRET = {
    # Attribute values as python-pkcs11 names them; the object lives in this session only.
    "TOKEN": False,
    "SENSITIVE": False,
    "EXTRACTABLE": True,
    "PRIVATE": True,
}


def _secret_template() -> dict[Any, Any]:
    from pkcs11 import Attribute

    return {getattr(Attribute, name): value for name, value in _SESSION_SECRET.items()}


def key_wrap(current: Session, key: Any, plaintext: bytes) -> bytes:
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    secret = current.session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
            Attribute.VALUE: frame(plaintext),
            **_secret_template(),
        }
    )
    try:
        return bytes(key.wrap_key(secret, mechanism=Mechanism.AES_KEY_WRAP_PAD))
    finally:
        with suppress(Exception):
            secret.destroy()


def key_unwrap(current: Session, key: Any, body: bytes) -> bytes:
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

    del current
    secret = key.unwrap_key(
        ObjectClass.SECRET_KEY,
        KeyType.GENERIC_SECRET,
        body,
        mechanism=Mechanism.AES_KEY_WRAP_PAD,
        capabilities=MechanismFlag(0),
        template=_secret_template(),
    )
    try:
        return unframe(bytes(secret[Attribute.VALUE]))
    finally:
        with suppress(Exception):
            secret.destroy()


def frame(plaintext: bytes) -> bytes:
    """What key wrap encrypts: length(2) || plaintext || zeros to a multiple of 8 bytes.

    The length is inside the wrapped (authenticated) bytes: SoftHSM2's unwrap returns
    the RFC 5649 padding along with the secret, so it cannot be trusted to strip it.
    """
    framed = len(plaintext).to_bytes(2, "big") + plaintext
    return framed + bytes(-len(framed) % 8)


def unframe(value: bytes) -> bytes:
    size = int.from_bytes(value[:2], "big")
    if len(value) < 2 + size or any(value[2 + size :]):
        raise InvalidCiphertext
    return value[2 : 2 + size]
