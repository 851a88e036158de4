"""The AES keys of a label in a token: their identity, which one writes, and finding them.

key_id is `pkcs11:<token label>/<key label>:<fingerprint hex>`, where the fingerprint is
the first 8 bytes of SHA-256 over the token label, the key label, the key's CKA_ID and
its CKA_CHECK_VALUE (when the token exposes it). Rotation by label: generate a new AES
key with the same label and a higher CKA_ID (compared as a big-endian number); refresh()
then makes it the write key, under a new key_id, and the older keys of that label stay
usable for unwrap. Several keys of the label with no single highest CKA_ID are refused
unless `key_id_hex` names the write key's CKA_ID.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from kmsplug.errors import ProviderRefused
from kmsplug.providers.pkcs11.mechanisms import FINGERPRINT_BYTES
from kmsplug.providers.pkcs11.session import Session
from kmsplug.providers.pkcs11.settings import Pkcs11Settings

log = logging.getLogger(__name__)

MAX_KEYS_PER_LABEL = 64
RESCAN_INTERVAL = 1.0
"""Seconds between two token scans for a key fingerprint a blob names but no key has."""


def key_id_for(settings: Pkcs11Settings, fp: bytes) -> str:
    return f"{settings.key_id_prefix}{fp.hex()}"


def fingerprint(token_label: str, key_label: str, cka_id: bytes, check_value: bytes) -> bytes:
    """The stable identity of a token key, as in its key_id (see the module docstring)."""
    digest = hashlib.sha256(b"kmsplug/pkcs11/key/v1\0")
    for part in (token_label.encode(), key_label.encode(), cka_id, check_value):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()[:FINGERPRINT_BYTES]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a token scan learned of one AES key (public attributes only)."""

    fingerprint: bytes
    cka_id: bytes
    key_id: str
    bits: int
    encrypt: bool
    decrypt: bool
    wrap: bool
    unwrap: bool

    @property
    def order(self) -> int:
        return int.from_bytes(self.cka_id, "big")

    def missing_for(self, mechanism: str) -> list[str]:
        """The attributes this key lacks for `mechanism`, by name ([] if usable)."""
        needed = (
            {"CKA_ENCRYPT": self.encrypt, "CKA_DECRYPT": self.decrypt}
            if mechanism == "aes-gcm"
            else {"CKA_WRAP": self.wrap, "CKA_UNWRAP": self.unwrap}
        )
        return [name for name, present in needed.items() if not present]


def choose_writer(keys: list[KeyInfo], settings: Pkcs11Settings) -> KeyInfo:
    """The write key among the keys of the label; ProviderRefused says what to fix."""
    where = f"labelled {settings.key_label!r} in token {settings.token_label!r}"
    if not keys:
        raise ProviderRefused(
            f"no AES key {where}: generate one, e.g. pkcs11-tool --keygen --key-type aes:32 "
            f"--label {settings.key_label} --id 01"
        )
    if settings.key_id_hex:
        wanted = bytes.fromhex(settings.key_id_hex)
        matches = [key for key in keys if key.cka_id == wanted]
        if not matches:
            raise ProviderRefused(f"no AES key {where} has CKA_ID {settings.key_id_hex}")
        if len({key.fingerprint for key in matches}) > 1:
            raise ProviderRefused(
                f"{len(matches)} AES keys {where} share CKA_ID {settings.key_id_hex}: "
                "give each a distinct CKA_ID"
            )
        return matches[0]
    top = max(key.order for key in keys)
    writers = {key.fingerprint: key for key in keys if key.order == top}
    if len(writers) > 1:
        raise ProviderRefused(
            f"{len(keys)} AES keys {where} and no single one has the highest CKA_ID: give "
            "the newest key the highest CKA_ID, or set --pkcs11-key-id to the write key's"
        )
    return next(iter(writers.values()))


def scan(current: Session, settings: Pkcs11Settings) -> list[KeyInfo]:
    """List the AES keys of the label in this session and remember their objects."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    found: list[KeyInfo] = []
    objects: dict[bytes, list[Any]] = {}
    search = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.LABEL: settings.key_label,
    }
    for number, key in enumerate(current.session.get_objects(search)):
        if number == MAX_KEYS_PER_LABEL:
            log.warning(
                "pkcs11: more than %d keys labelled %r; the others are ignored",
                MAX_KEYS_PER_LABEL,
                settings.key_label,
            )
            break
        cka_id = bytes(_attribute(key, Attribute.ID, b""))
        check = bytes(_attribute(key, Attribute.CHECK_VALUE, b""))
        fp = fingerprint(settings.token_label, settings.key_label, cka_id, check)
        found.append(
            KeyInfo(
                fingerprint=fp,
                cka_id=cka_id,
                key_id=key_id_for(settings, fp),
                bits=int(_attribute(key, Attribute.VALUE_LEN, 0)) * 8,
                encrypt=bool(_attribute(key, Attribute.ENCRYPT, False)),
                decrypt=bool(_attribute(key, Attribute.DECRYPT, False)),
                wrap=bool(_attribute(key, Attribute.WRAP, False)),
                unwrap=bool(_attribute(key, Attribute.UNWRAP, False)),
            )
        )
        objects.setdefault(fp, []).append(key)
    current.keys = objects
    current.scanned_at = time.monotonic()
    return found


def scan_if_stale(current: Session, settings: Pkcs11Settings) -> None:
    """Scan again unless this session did within RESCAN_INTERVAL (and found keys)."""
    if time.monotonic() - current.scanned_at >= RESCAN_INTERVAL or not current.keys:
        scan(current, settings)


def objects(current: Session, settings: Pkcs11Settings, fp: bytes) -> list[Any]:
    """This session's key objects of fingerprint `fp`, scanning the token when unknown."""
    keys = current.keys.get(fp)
    if not keys and time.monotonic() - current.scanned_at >= RESCAN_INTERVAL:
        scan(current, settings)
        keys = current.keys.get(fp)
    return keys or []


def _attribute(key: Any, attribute: Any, default: Any) -> Any:
    try:
        return key[attribute]
    except Exception:  # not defined for this key or token (AttributeTypeInvalid, ...)
        return default
