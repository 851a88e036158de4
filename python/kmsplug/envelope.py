"""Sealing and opening DEKs: the only module that talks to the Rust core directly.

In hierarchy mode (the default) a DEK is sealed in Rust under a local KEK that the write
provider wrapped once; a ciphertext carries its wrapped local KEK, so opening needs the
remote KMS only the first time a process meets that KEK. Concurrent first meetings of one
KEK share a single unwrap, and the ciphertexts that piled up behind it are opened in one
batch call. In direct mode every DEK is wrapped by the provider itself, as the peers do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kmsplug._kmsplug import (
    MAX_PLAINTEXT,
    V1_MAX_CIPHERTEXT,
    V2_MAX_CIPHERTEXT,
    Keyring,
    RootKey,
    peek,
)
from kmsplug.errors import (
    InvalidCiphertext,
    KekNotCached,
    NeedsRotation,
    PlaintextTooLarge,
    UnknownKeyId,
)

if TYPE_CHECKING:
    from kmsplug.providers.base import RemoteKek

__all__ = [
    "MAX_PLAINTEXT",
    "V1_MAX_CIPHERTEXT",
    "V2_MAX_CIPHERTEXT",
    "Envelope",
    "Keyring",
    "RootKey",
    "RotationPolicy",
    "peek",
]

MODE_HIERARCHY = 1
MODE_DIRECT = 2


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """When a local KEK is retired, and how many retired ones stay unwrapped in memory.

    Random 96-bit nonces keep AES-GCM safe for far more than 2**24 seals per key
    (collision odds below 2**-48); the soft limit leaves the rotation plenty of slack.
    """

    rotate_after_seals: int = 1 << 22
    max_seals: int = 1 << 24
    max_age_seconds: float = 7 * 24 * 3600.0
    cache_size: int = 4096
    cache_ttl_seconds: float = 24 * 3600.0

    def new_keyring(self) -> Keyring:
        return Keyring(**self._fields())

    def apply_to(self, keyring: Keyring) -> None:
        keyring.set_policy(**self._fields())

    def _fields(self) -> dict[str, Any]:
        return {
            "rotate_after_seals": self.rotate_after_seals,
            "max_seals": self.max_seals,
            "max_age_seconds": self.max_age_seconds,
            "cache_size": self.cache_size,
            "cache_ttl_seconds": self.cache_ttl_seconds,
        }


class Envelope:
    """Seals DEKs for the write provider and opens what any configured provider wrapped."""

    def __init__(
        self,
        writer: RemoteKek,
        readers: Sequence[RemoteKek] = (),
        *,
        hierarchy: bool = True,
        policy: RotationPolicy | None = None,
    ) -> None:
        self.writer = writer
        self.providers: tuple[RemoteKek, ...] = (writer, *readers)
        self.hierarchy = hierarchy
        self._keyring = (policy or RotationPolicy()).new_keyring()
        self._rotation: asyncio.Task[None] | None = None
        # wrapped local KEK -> ciphertexts waiting for it to be unwrapped
        self._cold: dict[bytes, list[tuple[bytes, str | None, asyncio.Future[bytes]]]] = {}

    @property
    def key_id(self) -> str:
        """The key_id stamped on what `seal` returns now (Status must report this one)."""
        if self.hierarchy:
            return self._keyring.current_key_id or self.writer.key_id
        return self.writer.key_id

    def stats(self) -> dict[str, int]:
        return self._keyring.stats()

    def set_policy(self, policy: RotationPolicy) -> None:
        """Apply new rotation budgets and cache limits (a reload); ValueError if invalid."""
        policy.apply_to(self._keyring)

    async def start(self) -> None:
        """Make the first local KEK, so the first Encrypt does not wait for the provider."""
        if self.hierarchy:
            await self.rotate()

    async def rotate(self) -> None:
        """Retire the current local KEK for a new one; concurrent callers share one rotation."""
        if self._rotation is None or self._rotation.done():
            self._rotation = asyncio.create_task(self.writer.new_local_kek(self._keyring))
        await asyncio.shield(self._rotation)

    def needs_rotation(self) -> bool:
        """True when the local KEK's budget or age runs low, or the remote key changed."""
        if not self.hierarchy:
            return False
        return self._keyring.needs_rotation() or self._keyring.current_key_id != self.writer.key_id

    async def seal(self, plaintext: bytes) -> tuple[bytes, str]:
        """Seal a DEK; return the ciphertext and the key_id it is stamped with."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise PlaintextTooLarge(f"plaintext is larger than {MAX_PLAINTEXT} bytes")
        if not self.hierarchy:
            return await self.writer.wrap(plaintext), self.writer.key_id
        keyring = self._keyring
        try:
            ciphertext = keyring.seal(plaintext)
        except NeedsRotation:
            await self.rotate()
            ciphertext = keyring.seal(plaintext)
        if keyring.needs_rotation() and (self._rotation is None or self._rotation.done()):
            # Soft limit reached: rotate in the background while this KEK still seals.
            self._rotation = asyncio.create_task(self.writer.new_local_kek(keyring))
        return ciphertext, keyring.current_key_id or self.writer.key_id

    async def open(self, ciphertext: bytes, key_id: str | None = None) -> bytes:
        """Open a ciphertext; `key_id` (KMS v2) must be the one it was sealed under.

        UnknownKeyId means the caller's key_id is none we know. A ciphertext that names a
        key we do not know, or another key than the caller's, is InvalidCiphertext: that
        is what tampering looks like, and v1 callers send no key_id at all.
        """
        try:
            return self._keyring.open(ciphertext, key_id)
        except KekNotCached:
            return await self._open_cold(ciphertext, key_id)
        except InvalidCiphertext:
            return await self._open_direct(ciphertext, key_id)
        except UnknownKeyId:
            self._check_known(key_id)
            raise InvalidCiphertext("invalid ciphertext") from None

    def knows(self, key_id: str) -> bool:
        """Whether `key_id` names a key we can open ciphertexts of."""
        return key_id == self._keyring.current_key_id or any(
            provider.owns(key_id) for provider in self.providers
        )

    def _check_known(self, key_id: str | None) -> None:
        if key_id is not None and not self.knows(key_id):
            raise UnknownKeyId("unknown key_id")

    def _provider_for(self, embedded_key_id: str, key_id: str | None) -> RemoteKek:
        """The provider that wrapped a ciphertext, after checking it against the caller's."""
        self._check_known(key_id)
        if key_id is not None and key_id != embedded_key_id:
            raise InvalidCiphertext("invalid ciphertext")
        for provider in self.providers:
            if provider.owns(embedded_key_id):
                return provider
        raise InvalidCiphertext("invalid ciphertext")

    async def _open_direct(self, ciphertext: bytes, key_id: str | None) -> bytes:
        try:
            mode, embedded_key_id, _ = peek(ciphertext)
        except InvalidCiphertext:
            for provider in self.providers:  # another plugin's format, from before a swap
                if provider.claims_legacy(ciphertext):
                    if not provider.legacy_ignores_key_id():
                        self._check_known(key_id)
                    return await provider.unwrap_legacy(ciphertext)
            self._check_known(key_id)
            raise
        if mode != MODE_DIRECT:
            self._check_known(key_id)
            raise InvalidCiphertext("invalid ciphertext")
        provider = self._provider_for(embedded_key_id, key_id)
        try:
            return await provider.unwrap(ciphertext)
        except UnknownKeyId:
            raise InvalidCiphertext("invalid ciphertext") from None

    async def _open_cold(self, ciphertext: bytes, key_id: str | None) -> bytes:
        _, embedded_key_id, wrapped = peek(ciphertext)
        provider = self._provider_for(embedded_key_id, key_id)
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        queue = self._cold.get(wrapped)
        if queue is None:
            self._cold[wrapped] = queue = []
            # A task of its own, so a cancelled first caller does not cancel the others.
            asyncio.create_task(self._load_then_open(provider, wrapped))  # noqa: RUF006
        queue.append((ciphertext, key_id, waiter))
        return await waiter

    async def _load_then_open(self, provider: RemoteKek, wrapped: bytes) -> None:
        try:
            first = self._cold[wrapped][0][0]
            await provider.load_local_kek(self._keyring, first)
        except BaseException as exc:
            for _, key_id, waiter in self._cold.pop(wrapped, []):
                if not waiter.done():
                    waiter.set_exception(self._caller_error(exc, key_id))
            if not isinstance(exc, Exception):
                raise
            return
        waiting = self._cold.pop(wrapped, [])
        results = self._keyring.open_batch(
            [ciphertext for ciphertext, _, _ in waiting], [key_id for _, key_id, _ in waiting]
        )
        for (_, key_id, waiter), result in zip(waiting, results, strict=True):
            if waiter.done():  # the caller gave up (deadline) meanwhile
                continue
            if isinstance(result, BaseException):
                waiter.set_exception(self._caller_error(result, key_id))
            else:
                waiter.set_result(result)

    def _caller_error(self, exc: BaseException, key_id: str | None) -> BaseException:
        """What one waiter sees when the shared unwrap or its open failed."""
        if isinstance(exc, UnknownKeyId | KekNotCached):
            # The wrapped KEK or key_id in the header does not fit: tampered or foreign.
            return InvalidCiphertext("invalid ciphertext")
        return exc if isinstance(exc, Exception) else asyncio.CancelledError()


def ciphertext_limit(api: str) -> int:
    """The largest ciphertext kube-apiserver accepts from Encrypt for an API version."""
    return V1_MAX_CIPHERTEXT if api == "v1beta1" else V2_MAX_CIPHERTEXT
