"""How kube-apiserver stored a value in etcd, read from its prefix (kms-protocol.md 3).

`k8s:enc:kms:v2:<name>:` + EncryptedObject protobuf, `k8s:enc:kms:v1:<name>:` + 2-byte
length + the plugin's ciphertext, `k8s:enc:aescbc|aesgcm|secretbox:v1:<key>:`, or no
prefix at all (identity: protobuf starting `k8s\\0`, or JSON).
"""

from __future__ import annotations

from dataclasses import dataclass

from kmsplug._proto.v2.encrypted_object_pb2 import EncryptedObject
from kmsplug.core import peek
from kmsplug.errors import InvalidCiphertext

IDENTITY = "identity"
KMS_V1 = "kms-v1"
KMS_V2 = "kms-v2"
LOCAL_KINDS = ("aescbc", "aesgcm", "secretbox")


@dataclass(frozen=True, slots=True)
class Storage:
    """One stored value's encryption, without its contents."""

    kind: str
    """identity, aescbc, aesgcm, secretbox, kms-v1, kms-v2 or unknown."""
    provider: str = ""
    """The EncryptionConfiguration provider (kms name or local key name)."""
    key_id: str = ""
    """The KMS key_id (v2; v1 when the ciphertext is kmsplug's own format)."""

    @property
    def encrypted(self) -> bool:
        return self.kind != IDENTITY


def classify(value: bytes) -> Storage:
    if not value.startswith(b"k8s:enc:"):
        return Storage(IDENTITY)
    parts = value.split(b":", 5)
    if len(parts) < 6:
        return Storage("unknown")
    kind, version, name, rest = parts[2].decode(), parts[3], parts[4].decode(), parts[5]
    if kind == "kms" and version == b"v2":
        return Storage(KMS_V2, name, _v2_key_id(rest))
    if kind == "kms" and version == b"v1":
        return Storage(KMS_V1, name, _v1_key_id(rest))
    if kind in LOCAL_KINDS:
        return Storage(kind, name)
    return Storage("unknown", name)


def _v2_key_id(body: bytes) -> str:
    stored = EncryptedObject()
    try:
        stored.ParseFromString(body)
    except Exception:  # a corrupt value: reported without a key_id
        return ""
    return str(stored.keyID)


def _v1_key_id(body: bytes) -> str:
    if len(body) < 2:
        return ""
    length = int.from_bytes(body[:2], "big")
    try:
        _, key_id, _ = peek(body[2 : 2 + length])
    except InvalidCiphertext:  # another plugin's ciphertext: no key_id to read
        return ""
    return key_id
