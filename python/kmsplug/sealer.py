"""Sealing DEKs into envelopes (kmsplug's ciphertext format) and opening them.

The sealer owns the local-KEK keyring (the Rust core's): it decides when a local KEK is
made, cached or opened. In hierarchy mode (the default) a DEK is sealed in Rust under a
local KEK that the write provider wrapped once; an envelope carries its wrapped local KEK,
so opening needs the provider only the first time a process meets that KEK. Concurrent
first meetings of one KEK share a single unwrap, and the envelopes that piled up behind it
are opened in one batch call. In direct mode every DEK is wrapped by the provider itself,
as the peers do, and the provider's blob is framed in kmsplug's format (mode 2, the
key_id in its header, checked on every open like a mode-1 key_id; the provider binds it
into its KMS's context where it can). Only a `--compat` mode writes a peer plugin's bare
format. Bare blobs (the peers', and those older kmsplug releases wrote in direct mode)
open through the providers' legacy path. Providers only wrap and unwrap bytes; the local
key file's key never leaves Rust (the keyring uses it directly), and a local KEK made for
a remote provider exists in Python only as one bytearray, wiped after the wrap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kmsplug.core import (
    MAX_PLAINTEXT,
    MODE_DIRECT,
    KeyringStats,
    RotationPolicy,
    frame_direct,
    peek,
    random_key,
)
from kmsplug.errors import (
    InvalidCiphertext,
    KekNotCached,
    NeedsRotation,
    PlaintextTooLarge,
    UnknownKeyId,
)
from kmsplug.providers.base import KekProvider
from kmsplug.providers.local import KeyFileKek


class Sealer:
    """Seals DEKs for the write provider and opens what any configured provider wrapped."""

    def __init__(
        self,
        writer: KekProvider,
        readers: Sequence[KekProvider] = (),
        *,
        hierarchy: bool = True,
        policy: RotationPolicy | None = None,
    ) -> None:
        self.writer = writer
        self.providers: tuple[KekProvider, ...] = (writer, *readers)
        self.hierarchy = hierarchy
        policy = policy or RotationPolicy()
        self._keyring = policy.new_keyring()
        self._apply_root_budget(policy)
        self._rotation: asyncio.Task[None] | None = None
        # wrapped local KEK -> ciphertexts waiting for it to be unwrapped
        self._cold: dict[bytes, list[tuple[bytes, str | None, asyncio.Future[bytes]]]] = {}

    @property
    def key_id(self) -> str:
        """The key_id stamped on what `seal` returns now (Status must report this one)."""
        if self.hierarchy:
            return self._keyring.current_key_id or self.writer.key_id
        return self.writer.key_id

    def stats(self) -> KeyringStats:
        return KeyringStats.of(self._keyring)

    def set_policy(self, policy: RotationPolicy) -> None:
        """Apply new rotation budgets and cache limits (a reload); ValueError if invalid."""
        policy.apply_to(self._keyring)
        self._apply_root_budget(policy)

    def _apply_root_budget(self, policy: RotationPolicy) -> None:
        """The local key file's root key seals under the same budget as a local KEK."""
        if isinstance(self.writer, KeyFileKek):
            self.writer.set_budget(policy)

    async def start(self) -> None:
        """Make the first local KEK, so the first Encrypt does not wait for the provider."""
        if self.hierarchy:
            await self.rotate()

    async def rotate(self) -> None:
        """Retire the current local KEK for a new one; concurrent callers share one rotation."""
        if self._rotation is None or self._rotation.done():
            self._rotation = asyncio.create_task(self._new_local_kek())
        await asyncio.shield(self._rotation)

    async def _new_local_kek(self) -> None:
        """Make a fresh local KEK, wrapped by the write provider, the keyring's current."""
        writer = self.writer
        if isinstance(writer, KeyFileKek):
            self._keyring.rotate_local(writer.root)
            return
        kek = random_key()  # the only Python copy: handed to wrap as it is, then wiped
        try:
            wrapped = await writer.wrap(kek)
            # After the wrap: a remote key that moved to a new version says so in key_id.
            self._keyring.install_current(writer.key_id, wrapped, kek)
        finally:
            kek[:] = bytes(len(kek))

    def needs_rotation(self) -> bool:
        """True when the local KEK's budget or age runs low, or the remote key changed."""
        if not self.hierarchy:
            return False
        return self._keyring.needs_rotation() or self._keyring.current_key_id != self.writer.key_id

    async def seal(self, plaintext: bytes) -> tuple[bytes, str]:
        """Seal a DEK; return the ciphertext and the key_id it is stamped with."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise PlaintextTooLarge
        if not self.hierarchy:
            return await self._seal_direct(plaintext)
        keyring = self._keyring
        try:
            ciphertext = keyring.seal(plaintext)
        except NeedsRotation:
            await self.rotate()
            ciphertext = keyring.seal(plaintext)
        if keyring.needs_rotation() and (self._rotation is None or self._rotation.done()):
            # Soft limit reached: rotate in the background while this KEK still seals.
            self._rotation = asyncio.create_task(self._new_local_kek())
        return ciphertext, keyring.current_key_id or self.writer.key_id

    async def _seal_direct(self, plaintext: bytes) -> tuple[bytes, str]:
        """Direct mode: the provider wraps the DEK; its blob goes out in kmsplug's frame."""
        writer = self.writer
        if isinstance(writer, KeyFileKek) or writer.writes_peer_format():
            # The key file's envelope is kmsplug's already; a compat mode wants the bare
            # blob, under the key_id the provider reports after the call (as the peer).
            return await writer.wrap(plaintext), writer.key_id
        if not writer.binds_key_id():
            # Nothing bound: frame the key_id that names the key version the call used.
            wrapped = await writer.wrap(plaintext)
            return frame_direct(writer.key_id, wrapped), writer.key_id
        # The key_id bound and framed is the one read before the call: should the KMS
        # move to a new key version meanwhile, this DEK still names a key_id it opens under.
        key_id = writer.key_id
        return frame_direct(key_id, await writer.wrap_bound(plaintext, key_id)), key_id

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
            raise InvalidCiphertext from None

    def knows(self, key_id: str) -> bool:
        """Whether `key_id` names a key we can open ciphertexts of."""
        return key_id == self._keyring.current_key_id or any(
            provider.owns(key_id) for provider in self.providers
        )

    def _check_known(self, key_id: str | None) -> None:
        if key_id is not None and not self.knows(key_id):
            raise UnknownKeyId

    def _provider_for(self, embedded_key_id: str, key_id: str | None) -> KekProvider:
        """The provider that wrapped a ciphertext, after checking it against the caller's."""
        self._check_known(key_id)
        if key_id is not None and key_id != embedded_key_id:
            raise InvalidCiphertext
        for provider in self.providers:
            if provider.owns(embedded_key_id):
                return provider
        raise InvalidCiphertext

    async def _open_direct(self, ciphertext: bytes, key_id: str | None) -> bytes:
        try:
            mode, embedded_key_id, wrapped = peek(ciphertext)
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
            raise InvalidCiphertext
        provider = self._provider_for(embedded_key_id, key_id)
        try:
            if isinstance(provider, KeyFileKek):  # its envelope is the whole ciphertext
                return await provider.unwrap(ciphertext)
            return await provider.unwrap_bound(wrapped, embedded_key_id)
        except UnknownKeyId:
            raise InvalidCiphertext from None

    async def _open_cold(self, ciphertext: bytes, key_id: str | None) -> bytes:
        _, embedded_key_id, wrapped = peek(ciphertext)
        provider = self._provider_for(embedded_key_id, key_id)
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        queue = self._cold.get(wrapped)
        if queue is None:
            self._cold[wrapped] = queue = []
            # A task of its own, so a cancelled first caller does not cancel the others.
            asyncio.create_task(  # noqa: RUF006
                self._load_then_open(provider, embedded_key_id, wrapped, ciphertext)
            )
        queue.append((ciphertext, key_id, waiter))
        return await waiter

    async def _load_local_kek(
        self, provider: KekProvider, key_id: str, wrapped: bytes, ciphertext: bytes
    ) -> None:
        """Unwrap the local KEK that sealed `ciphertext` into the keyring's cache."""
        if isinstance(provider, KeyFileKek):
            self._keyring.unwrap_local(provider.root, ciphertext)  # all inside Rust
            return
        kek = bytearray(await provider.unwrap(wrapped))
        try:
            self._keyring.cache_kek(key_id, wrapped, kek)
        finally:
            kek[:] = bytes(len(kek))

    async def _load_then_open(
        self, provider: KekProvider, embedded_key_id: str, wrapped: bytes, first: bytes
    ) -> None:
        try:
            await self._load_local_kek(provider, embedded_key_id, wrapped, first)
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
            return InvalidCiphertext()
        return exc if isinstance(exc, Exception) else asyncio.CancelledError()
