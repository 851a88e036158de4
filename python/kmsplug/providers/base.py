"""The interface every KEK provider implements.

A provider owns one key-encryption key: a cloud CMK, a Transit key, an HSM key, or the
local key file. It wraps and unwraps bytes, says its key_id, and checks its health; it
knows nothing of gRPC, of the apiserver, or of the local-KEK keyring (the sealer decides
when a local KEK is made, cached or opened, and asks the provider only to wrap or unwrap
it).

Key hygiene: a local KEK reaches `wrap` as a `bytearray` that the sealer wipes after the
call; a provider passes that very buffer on where its SDK accepts one, and makes no
`bytes` copy of it. What an SDK copies internally (base64 text of the key in a request
body, the `bytes` an unwrap returns) cannot be wiped from Python: docs/security.md lists it.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from kmsplug.errors import InvalidCiphertext, ProviderTransient

#: A secret on its way to the KMS: a local KEK is a `bytearray` the caller wipes.
Secret = bytes | bytearray


class KekProvider(ABC):
    """A key-encryption key held by a KMS, HSM or key file."""

    #: A short stable name of the provider kind, for logs and metrics ("local", "alibaba", ...).
    kind: str = "remote"

    @property
    @abstractmethod
    def key_id(self) -> str:
        """The current key's identity: public, non-empty, at most 255 bytes, never reused."""

    def owns(self, key_id: str) -> bool:
        """Whether a ciphertext stamped with `key_id` was wrapped by this provider's key."""
        return key_id == self.key_id

    @abstractmethod
    async def wrap(self, plaintext: Secret) -> bytes:
        """Encrypt a small secret under the KEK (pass `plaintext` on as it is: no copy).

        The result is self-describing: `unwrap` gets nothing else back. In the compat
        modes it is the very ciphertext the peer plugin wrote.
        """

    @abstractmethod
    async def unwrap(self, wrapped: bytes) -> bytes:
        """Invert `wrap`; raise InvalidCiphertext if the blob is not ours or was altered."""

    async def wrap_bound(self, plaintext: Secret, key_id: str) -> bytes:
        """`wrap` for kmsplug's direct mode, where the result is framed with `key_id`.

        A provider whose KMS authenticates a context with the ciphertext binds `key_id`
        into it, so a frame whose key_id was altered fails at the KMS; the default binds
        nothing.
        """
        del key_id
        return await self.wrap(plaintext)

    async def unwrap_bound(self, wrapped: bytes, key_id: str) -> bytes:
        """Invert `wrap_bound` with the key_id of the frame."""
        del key_id
        return await self.unwrap(wrapped)

    def binds_key_id(self) -> bool:
        """Whether `wrap_bound` binds the key_id into what the KMS authenticates."""
        return False

    def writes_peer_format(self) -> bool:
        """Whether direct mode writes a peer plugin's own format (a `--compat` mode): the
        bare `wrap` output, under the peer's key_id, instead of kmsplug's frame."""
        return False

    async def health(self) -> None:
        """Raise if the KEK cannot be used right now (unreachable, disabled, refused).

        The default is a wrap+unwrap round trip of random bytes: it proves both
        permissions, not only that the KMS answers.
        """
        probe = os.urandom(32)
        if await self.unwrap(await self.wrap(probe)) != probe:
            raise ProviderTransient(f"{self.kind} KMS round trip returned other bytes")

    async def preflight(self) -> list[str]:
        """Check at start-up that the key is usable; raise ProviderRefused saying what to fix.

        Returns lines worth logging. The default is one health check.
        """
        await self.health()
        return [f"{self.kind} key {self.key_id} is usable"]

    async def reload_credentials(self) -> None:  # noqa: B027 - optional hook
        """Drop cached credentials and read them again from their source (SIGHUP).

        Calls in flight finish with the credentials they started with.
        """

    async def refresh(self) -> None:  # noqa: B027 - optional hook, most keys never move
        """Re-read the remote key's current version (a rotation there changes key_id)."""

    def credential_seconds_left(self) -> float | None:
        """Seconds until the provider's current credential expires; None if it does not."""
        return None

    def claims_legacy(self, ciphertext: bytes) -> bool:
        """Whether `ciphertext` is in the format of the plugin this provider replaces."""
        del ciphertext
        return False

    def legacy_ignores_key_id(self) -> bool:
        """Whether the replaced plugin's ciphertexts open whatever key_id they were stored
        under: true where the blob names its own key (the KMS resolves it) and that plugin
        never checked key_id, so its clusters hold objects under every --key it ever had."""
        return False

    async def unwrap_legacy(self, ciphertext: bytes) -> bytes:
        """Decrypt a ciphertext another plugin wrote (see `claims_legacy`)."""
        del ciphertext
        raise InvalidCiphertext

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections and other resources."""
