"""The Python front of the Rust core: the only module that imports `kmsplug._kmsplug`.

It re-exports what the package uses (the key classes, the header parser, the limits),
reads the rotation policy's defaults from the core instead of writing them again, and
gives the keyring's counters a type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kmsplug import _kmsplug
from kmsplug._kmsplug import (
    MAX_PLAINTEXT,
    MAX_SEALS_LIMIT,
    MODE_DIRECT,
    MODE_HIERARCHY,
    V1_MAX_CIPHERTEXT,
    V2_MAX_CIPHERTEXT,
    Keyring,
    RootKey,
    frame_direct,
    peek,
    random_key,
)

__all__ = [
    "MAX_PLAINTEXT",
    "MAX_SEALS_LIMIT",
    "MODE_DIRECT",
    "MODE_HIERARCHY",
    "V1_MAX_CIPHERTEXT",
    "V2_MAX_CIPHERTEXT",
    "Keyring",
    "KeyringStats",
    "RootKey",
    "RotationPolicy",
    "frame_direct",
    "peek",
    "random_key",
]


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """When a local KEK is retired, and how many retired ones stay unwrapped in memory.

    The defaults are the core's (rust/kmsplug-core/src/keyring/policy.rs says why).
    """

    rotate_after_seals: int = _kmsplug.DEFAULT_ROTATE_AFTER_SEALS
    max_seals: int = _kmsplug.DEFAULT_MAX_SEALS
    max_age_seconds: float = _kmsplug.DEFAULT_MAX_AGE_SECONDS
    cache_size: int = _kmsplug.DEFAULT_CACHE_SIZE
    cache_ttl_seconds: float = _kmsplug.DEFAULT_CACHE_TTL_SECONDS

    def new_keyring(self) -> Keyring:
        return Keyring(**asdict(self))

    def apply_to(self, keyring: Keyring) -> None:
        """Replace `keyring`'s policy (a reload); ValueError if this one is invalid."""
        keyring.set_policy(**asdict(self))


@dataclass(frozen=True, slots=True)
class KeyringStats:
    """The keyring's counters, for metrics and the audit trail."""

    seals: int
    """DEKs sealed under the current local KEK."""
    cache_len: int
    """Non-current local KEKs held unwrapped."""
    cache_hits: int
    cache_misses: int
    rotations: int
    """Local KEKs made current so far."""
    current_age_seconds: int

    @classmethod
    def of(cls, keyring: Keyring) -> KeyringStats:
        return cls(**keyring.stats())
