"""The embedded default: a 32-byte key file on the node, read and used only in Rust.

Good for development and single-node clusters, and the floor the benchmarks compare
against. The key file is created (mode 0600) on first start when absent; losing it loses
every Secret it protects, so back it up like any root key.
"""

from __future__ import annotations

import os
from pathlib import Path

from kmsplug.core import RootKey
from kmsplug.errors import KeyFileError
from kmsplug.providers.base import KekProvider


class KeyFileKek(KekProvider):
    """A KEK read from a local key file.

    Its key lives in Rust (`root`): the sealer hands it to the keyring, so local KEKs are
    made and unwrapped without a KEK byte reaching Python.
    """

    kind = "local"

    def __init__(self, root: RootKey, path: Path) -> None:
        self.root = root
        self.path = path

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

    async def wrap(self, plaintext: bytes) -> bytes:
        # A kmsplug direct-mode envelope: self-describing, key_id inside, header as AAD.
        return self.root.seal_direct(plaintext)

    async def unwrap(self, wrapped: bytes) -> bytes:
        return self.root.open_direct(wrapped)

    async def health(self) -> None:
        # The key is in memory; a round trip proves the AEAD path works end to end.
        probe = b"kmsplug-health"
        if self.root.open_direct(self.root.seal_direct(probe)) != probe:
            raise KeyFileError("local key self-test failed")
