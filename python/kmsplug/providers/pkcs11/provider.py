"""PKCS#11: an AES key inside an HSM (or SoftHSM2) as the KEK.

The provider wraps and unwraps on a session of the token's pool (`session`), with the
mechanism of the settings (`mechanisms`), under the write key of the label (`keys`).

Kubernetes' reference mock KMS plugin (kubernetes/kms `internal/plugins/_mock`) stored
`nonce(12) || ct || tag(16)`, AES-GCM under the key labelled `kms-test` with AAD = its
key_id, which is the key label. With the same HSM key, this provider owns that key_id and
opens those ciphertexts (`claims_legacy` / `unwrap_legacy`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio

from kmsplug.errors import InvalidCiphertext, KmsplugError, ProviderRefused, ProviderTransient
from kmsplug.providers.base import KekProvider, Secret
from kmsplug.providers.pkcs11 import keys, mechanisms
from kmsplug.providers.pkcs11.keys import KeyInfo, choose_writer
from kmsplug.providers.pkcs11.mechanisms import (
    FINGERPRINT_BYTES,
    GCM_TAG_BYTES,
    IV_BYTES,
    MAX_WRAP_INPUT,
    TAG_GCM,
)
from kmsplug.providers.pkcs11.session import (
    BAD_BLOB,
    Session,
    classify,
    error_name,
    pool_for,
    release_pool,
)
from kmsplug.providers.pkcs11.settings import PinSource, Pkcs11Settings
from kmsplug.providers.shared import WorkerThreads, note_call

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The reference mock's ciphertext sizes: nonce(12) || a 32-byte DEK or seed || tag(16).
MOCK_CIPHERTEXT_SIZES = frozenset({IV_BYTES + 32 + GCM_TAG_BYTES})
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


class Pkcs11Kek(KekProvider):
    kind = "pkcs11"

    def __init__(self, settings: Pkcs11Settings, pin: PinSource) -> None:
        settings.validate()
        self.settings = settings
        self._pin = pin
        self._threads = WorkerThreads(settings.max_sessions)
        self._pool = pool_for(settings)
        self._closed = False
        self._keys: dict[bytes, KeyInfo] = {}
        self._writer: KeyInfo | None = None

    def __repr__(self) -> str:
        return f"Pkcs11Kek({self.settings!r})"

    # -- identity ----------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        if self._writer is None:
            return f"{self.settings.key_id_prefix}unknown"
        return self._writer.key_id

    def owns(self, key_id: str) -> bool:
        prefix = self.settings.key_id_prefix
        return key_id == self.settings.key_label or (
            key_id.startswith(prefix) and len(key_id) == len(prefix) + 2 * FINGERPRINT_BYTES
        )

    @property
    def keys(self) -> list[KeyInfo]:
        """The keys of the label found by the last scan (preflight or refresh)."""
        return list(self._keys.values())

    # -- threads and sessions ----------------------------------------------------------

    async def _run(self, operation: str, call: Callable[[Session], T]) -> T:
        if self._closed:
            raise ProviderTransient("pkcs11 provider is closed")

        def in_thread() -> T:
            with self._pool.session(self._pin, self.settings) as current:
                try:
                    return call(current)
                except KmsplugError:
                    raise
                except Exception as exc:
                    raise classify(exc, self.settings, operation) from None

        # A hung token must not hold the caller past its deadline; the thread finishes
        # (or times out waiting for a session) on its own.
        return await self._threads.run(in_thread)

    async def _scan(self) -> KeyInfo:
        found = await self._run("scan", lambda current: keys.scan(current, self.settings))
        writer = choose_writer(found, self.settings)
        missing = writer.missing_for(self.settings.mechanism)
        if missing:
            raise ProviderRefused(
                f"the AES key labelled {self.settings.key_label!r} (CKA_ID "
                f"{writer.cka_id.hex() or '-'}) in token {self.settings.token_label!r} lacks "
                f"{', '.join(missing)}, needed by mechanism {self.settings.mechanism}"
            )
        previous = self._writer
        self._keys = {key.fingerprint: key for key in found}
        self._writer = writer
        if previous is not None and previous.fingerprint != writer.fingerprint:
            log.info("pkcs11: write key changed from %s to %s", previous.key_id, writer.key_id)
        return writer

    async def _current_writer(self) -> KeyInfo:
        return self._writer or await self._scan()

    # -- wrap and unwrap ---------------------------------------------------------------

    async def wrap(self, secret: Secret) -> bytes:
        if not 0 < len(secret) <= MAX_WRAP_INPUT:
            raise ValueError(f"pkcs11 wraps 1 to {MAX_WRAP_INPUT} bytes")
        # python-pkcs11 takes bytes only (it reads a bytearray as chunks): one copy that
        # cannot be wiped, made here and dropped when the call returns (security.md).
        plaintext = bytes(secret)
        writer = await self._current_writer()
        fp = writer.fingerprint
        note_call(key_version=fp.hex())
        tag = mechanisms.tag_of(self.settings.mechanism)

        def call(current: Session) -> bytes:
            found = keys.objects(current, self.settings, fp)
            if not found:
                raise ProviderRefused(
                    f"the write key {writer.key_id} is no longer in token "
                    f"{self.settings.token_label!r}: restore it, or refresh to pick the newest"
                )
            body = mechanisms.seal(current, found[0], tag, plaintext, writer.key_id.encode())
            return mechanisms.compose(tag, fp, body)

        return await self._run("wrap", call)

    async def unwrap(self, wrapped: bytes) -> bytes:
        tag, fp, body = mechanisms.parse(wrapped)
        note_call(key_version=fp.hex())
        key_id = keys.key_id_for(self.settings, fp)

        def call(current: Session) -> bytes:
            found = keys.objects(current, self.settings, fp)
            if not found:
                log.warning(
                    "pkcs11: no key with the fingerprint of %s in token %r (destroyed?)",
                    key_id,
                    self.settings.token_label,
                )
                raise InvalidCiphertext
            return _first_that_opens(current, found, tag, body, key_id.encode())

        return await self._run("unwrap", call)

    # -- the reference mock's ciphertexts ----------------------------------------------

    def claims_legacy(self, ciphertext: bytes) -> bool:
        """Our own blobs (direct mode) and the reference mock's `nonce || ct || tag`.

        The sealer asks the providers in turn and the first to claim a ciphertext decrypts
        it, so the claim is narrow: our blobs by their header and a fingerprint of a key
        of the label; the mock's by their exact size (a 32-byte DEK or KMS v2 seed is all
        an apiserver ever gave it) and by not being text (another plugin's ciphertext,
        e.g. Alibaba's base64 CiphertextBlob or Vault's `vault:v1:...`).
        """
        if self._is_ours(ciphertext):
            return True
        return len(ciphertext) in MOCK_CIPHERTEXT_SIZES and not _is_text(ciphertext)

    def _is_ours(self, ciphertext: bytes) -> bool:
        try:
            _, fp, _ = mechanisms.parse(ciphertext)
        except InvalidCiphertext:
            return False
        return fp in self._keys

    async def unwrap_legacy(self, ciphertext: bytes) -> bytes:
        await self._current_writer()  # the known fingerprints tell our blobs apart
        if self._is_ours(ciphertext):
            try:
                return await self.unwrap(ciphertext)
            except InvalidCiphertext:
                pass  # a mock nonce can start like our header: try the mock's format
        if (
            not IV_BYTES + GCM_TAG_BYTES
            < len(ciphertext)
            <= (IV_BYTES + MAX_WRAP_INPUT + GCM_TAG_BYTES)
        ):
            raise InvalidCiphertext
        aad = self.settings.key_label.encode()

        def call(current: Session) -> bytes:
            keys.scan_if_stale(current, self.settings)  # every key of the label, old ones too
            found = [key for group in current.keys.values() for key in group]
            if not found:
                raise InvalidCiphertext
            return _first_that_opens(current, found, TAG_GCM, ciphertext, aad)

        note_call(key_version="legacy")
        return await self._run("unwrap legacy", call)

    # -- health, preflight, refresh ----------------------------------------------------

    async def refresh(self) -> None:
        """Re-scan the token: a newer key of the label becomes the writer (new key_id)."""
        await self._scan()

    async def preflight(self) -> list[str]:
        settings = self.settings
        writer = await self._scan()
        mechanism = "CKM_AES_GCM" if settings.mechanism == "aes-gcm" else "CKM_AES_KEY_WRAP_PAD"

        def supported(current: Session) -> bool:
            from pkcs11 import Mechanism

            wanted = (
                Mechanism.AES_GCM if settings.mechanism == "aes-gcm" else Mechanism.AES_KEY_WRAP_PAD
            )
            return wanted in current.session.token.slot.get_mechanisms()

        if not await self._run("preflight", supported):
            raise ProviderRefused(
                f"token {settings.token_label!r} does not offer {mechanism}"
                + (": set --pkcs11-mechanism aes-key-wrap" if mechanism.endswith("GCM") else "")
            )
        await self.health()
        others = len(self._keys) - 1
        return [
            f"pkcs11 key {writer.key_id} (AES-{writer.bits or '?'}, CKA_ID "
            f"{writer.cka_id.hex() or '-'}, {mechanism}) in token {settings.token_label!r} is "
            f"usable; {others} older key(s) of the label kept for unwrap"
        ]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # Not on the provider's threads: a hung call there must not keep the pool open.
            await anyio.to_thread.run_sync(release_pool, self._pool)


def _first_that_opens(
    current: Session, found: list[Any], tag: int, body: bytes, aad: bytes
) -> bytes:
    """What the first of `found` opens; InvalidCiphertext when the blob is at fault (none
    opens and the keys work), else the token's failure."""
    last: Exception | None = None
    for key in found:
        try:
            return mechanisms.open_body(current, key, tag, body, aad)
        except Exception as exc:
            last = exc
    assert last is not None
    if error_name(last) not in BAD_BLOB:
        raise last
    # A generic error can be the blob's fault (a GCM tag mismatch in SoftHSM2) or the
    # token's: a round trip through the same key tells them apart.
    try:
        blob_at_fault = mechanisms.round_trip_works(current, found[0], tag)
    except Exception:
        blob_at_fault = False
    if blob_at_fault:
        raise InvalidCiphertext
    raise last


def _is_text(data: bytes) -> bool:
    return all(byte in _TEXT_BYTES for byte in data)


def build(settings: Pkcs11Settings, env: Mapping[str, str]) -> Pkcs11Kek:
    """The PKCS#11 provider; the PIN from its file or `env`."""
    settings.validate()
    pin = PinSource.of(settings, env)
    log.info(
        "pkcs11: library %s, token %r, key label %r, mechanism %s, PIN from %s",
        settings.library,
        settings.token_label,
        settings.key_label,
        settings.mechanism,
        pin.where,
    )
    return Pkcs11Kek(settings, pin)
