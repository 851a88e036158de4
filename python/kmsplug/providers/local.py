"""The embedded default: a 32-byte key file on the node, read and used only in Rust.

Good for development and single-node clusters, and the floor the benchmarks compare
against. The key file is created (mode 0600) on first start when absent; losing it loses
every Secret it protects, so back it up like any root key.

Every seal under the root key counts against its budget (`--kek-max-seals`, the same
limit as a local KEK's: random 96-bit nonces): direct-mode DEKs, health probes, and the
local KEKs of hierarchy mode. Past the soft limit (`--kek-rotate-after-seals`) a warning
says what to do; at the budget sealing stops (SealBudgetSpent: Encrypt fails, the health
probe fails) and opening goes on. The count is per process (see RootKey).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kmsplug.core import RootKey, RotationPolicy
from kmsplug.errors import KeyFileError
from kmsplug.providers.base import KekProvider, Secret

log = logging.getLogger(__name__)


class KeyFileKek(KekProvider):
    """A KEK read from a local key file.

    Its key lives in Rust (`root`): the sealer hands it to the keyring, so local KEKs are
    made and unwrapped without a KEK byte reaching Python.
    """

    kind = "local"

    def __init__(self, root: RootKey, path: Path) -> None:
        self.root = root
        self.path = path
        self._warn_at = RotationPolicy().rotate_after_seals
        self._warned = False

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> KeyFileKek:
        """Load the key file, creating it first when `create` is set and it is absent."""
        if create and not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                RootKey.create_file(os.fspath(path))
            except KeyFileError:
                # Another process won the race to create it; use theirs.
                if not path.exists():
                    raise
        return cls(RootKey.from_file(os.fspath(path)), path)

    @property
    def key_id(self) -> str:
        return self.root.key_id

    def set_budget(self, policy: RotationPolicy) -> None:
        """Apply the seal budget (`max_seals`) and the warning threshold of `policy`."""
        self.root.set_max_seals(policy.max_seals)
        self._warn_at = policy.rotate_after_seals
        self._warned = False

    def _seal(self, plaintext: Secret) -> bytes:
        sealed = self.root.seal_direct(plaintext)
        if not self._warned and self.root.seals >= self._warn_at:
            self._warned = True
            log.warning(
                "the local root key is running out of its seal budget: use hierarchy mode, "
                "or a new key file with this one as --decrypt-key-file",
                extra={"seals": self.root.seals, "max_seals": self.root.max_seals},
            )
        return sealed

    async def wrap(self, plaintext: Secret) -> bytes:
        # A kmsplug direct-mode envelope: self-describing, key_id inside, header as AAD.
        return self._seal(plaintext)

    async def unwrap(self, wrapped: bytes) -> bytes:
        return self.root.open_direct(wrapped)

    async def health(self) -> None:
        # The key is in memory; a round trip proves the AEAD path works end to end. It is
        # a seal like any other: once the budget is spent the probe fails, which is how
        # Status and /healthz show it.
        probe = b"kmsplug-health"
        if self.root.open_direct(self._seal(probe)) != probe:
            raise KeyFileError("local key self-test failed")
