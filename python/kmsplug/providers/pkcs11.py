"""PKCS#11: an AES key inside an HSM (or SoftHSM2) as the KEK.

Every PKCS#11 call blocks, so it runs in a worker thread (at most `max_sessions` at a
time), each on a session of its own taken from a pool that is shared by every provider of
this process on the same token. The calls themselves are serialised by one process-wide
lock: python-pkcs11 initialises the module with C_Initialize(NULL), which tells it that no
two threads call it at once, and SoftHSM2 then takes no locks of its own (concurrent
calls crash it). The event loop never waits: it is the worker threads that queue.

The pool logs in once, on a session it keeps open for that purpose only (the login state
of a token is per process in PKCS#11); the working sessions inherit it. A session-level
failure (token removed, session closed, logged out) drops the pool and surfaces as
transient: the resilience layer retries on a fresh login. A PIN the token rejected is
never tried again (HSMs lock a PIN after a few failures): fix the PIN file, then the next
call reads it and tries the new PIN.

Mechanisms:
- `aes-gcm` (default): CKM_AES_GCM, a 12-byte IV drawn from the token's RNG, a 16-byte
  tag, AAD = the key_id bytes of the HSM key used;
- `aes-key-wrap`: CKM_AES_KEY_WRAP_PAD (C_WrapKey of a session-only generic secret holding
  length(2) || secret || zero padding), for HSMs without GCM. SoftHSM2 implements that
  mechanism as RFC 5649 (KWP). It is deterministic: the same secret wraps the same way.

Wrapped blob: 1 mechanism byte (1 = GCM, 2 = key wrap) || the key's 8-byte fingerprint ||
GCM: iv(12) || ct || tag(16); key wrap: the token's output. The fingerprint tells unwrap
which key of the label to use, so old keys keep opening what they wrapped.

key_id is `pkcs11:<token label>/<key label>:<fingerprint hex>`, where the fingerprint is
the first 8 bytes of SHA-256 over the token label, the key label, the key's CKA_ID and
its CKA_CHECK_VALUE (when the token exposes it). Rotation by label: generate a new AES
key with the same label and a higher CKA_ID (compared as a big-endian number); refresh()
then makes it the write key, under a new key_id, and the older keys of that label stay
usable for unwrap. Several keys of the label with no single highest CKA_ID are refused
unless `key_id_hex` names the write key's CKA_ID.

Kubernetes' reference mock KMS plugin (kubernetes/kms `internal/plugins/_mock`) stored
`nonce(12) || ct || tag(16)`, AES-GCM under the key labelled `kms-test` with AAD = its
key_id, which is the key label. With the same HSM key, this provider owns that key_id and
opens those ciphertexts (`claims_legacy` / `unwrap_legacy`).

Environment (`pkcs11_settings_from_env`):

    KMSPLUG_PKCS11_LIBRARY     PKCS#11 module (default /usr/lib/softhsm/libsofthsm2.so)
    KMSPLUG_PKCS11_TOKEN       token label (required)
    KMSPLUG_PKCS11_PIN_FILE    file holding the user PIN (re-read when a login is needed)
    KMSPLUG_PKCS11_PIN         the user PIN itself (when no PIN file is given)
    KMSPLUG_PKCS11_KEY_LABEL   AES key label (required)
    KMSPLUG_PKCS11_KEY_ID      hex CKA_ID of the write key (optional, see above)
    KMSPLUG_PKCS11_MECHANISM   aes-gcm (default) | aes-key-wrap
    KMSPLUG_PKCS11_SESSIONS    worker threads and sessions (default 2)
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio

from kmsplug.errors import (
    ConfigError,
    InvalidCiphertext,
    KmsplugError,
    ProviderRefused,
    ProviderTransient,
)
from kmsplug.providers.base import RemoteKek
from kmsplug.providers.resilient import ResiliencePolicy, Resilient, note_call

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
MECHANISMS = ("aes-gcm", "aes-key-wrap")
TAG_GCM = 1
TAG_KEY_WRAP = 2
FINGERPRINT_BYTES = 8
IV_BYTES = 12
GCM_TAG_BYTES = 16
MAX_WRAP_INPUT = 512
"""The largest secret wrap accepts (kmsplug's MAX_PLAINTEXT)."""
MAX_KEYS_PER_LABEL = 64
RESCAN_INTERVAL = 1.0
"""Seconds between two token scans for a key fingerprint a blob names but no key has."""
SESSION_WAIT = 5.0
#: The reference mock's ciphertext sizes: nonce(12) || a 32-byte DEK or seed || tag(16).
MOCK_CIPHERTEXT_SIZES = frozenset({IV_BYTES + 32 + GCM_TAG_BYTES})
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_PROBE = b"kmsplug-pkcs11-health-probe-0001"


@dataclass(frozen=True, slots=True)
class Pkcs11Settings:
    token_label: str
    key_label: str
    """The AES key's CKA_LABEL; also the v2 key_id of the reference mock's ciphertexts."""
    library: str = DEFAULT_LIBRARY
    pin_file: str = ""
    """File holding the user PIN (trailing newline ignored); read when logging in."""
    pin_env: str = ""
    """Name of the environment variable holding the user PIN (not the PIN)."""
    key_id_hex: str = ""
    """CKA_ID (hex) of the write key; empty: the key of the label with the highest CKA_ID."""
    mechanism: str = "aes-gcm"
    max_sessions: int = 2
    """Worker threads (and sessions) at most; the PKCS#11 calls themselves are serialised."""

    def validate(self) -> None:
        if not self.token_label:
            raise ConfigError("pkcs11: the token label is required (--pkcs11-token)")
        if not self.key_label:
            raise ConfigError("pkcs11: the key label is required (--pkcs11-key-label)")
        if not self.library:
            raise ConfigError("pkcs11: the PKCS#11 library path is required")
        if self.mechanism not in MECHANISMS:
            raise ConfigError(
                f"pkcs11: mechanism {self.mechanism!r} unknown, use one of {', '.join(MECHANISMS)}"
            )
        if not self.pin_file and not self.pin_env:
            raise ConfigError(
                "pkcs11: a user PIN is required (--pkcs11-pin-file, or KMSPLUG_PKCS11_PIN)"
            )
        if not 1 <= self.max_sessions <= 64:
            raise ConfigError("pkcs11: sessions must be between 1 and 64")
        try:
            bytes.fromhex(self.key_id_hex)
        except ValueError:
            raise ConfigError("pkcs11: the key id (CKA_ID) must be hex") from None
        if len(f"pkcs11:{self.token_label}/{self.key_label}:".encode()) + 16 > 255:
            raise ConfigError("pkcs11: token and key labels are too long for a key_id")

    @property
    def key_id_prefix(self) -> str:
        return f"pkcs11:{self.token_label}/{self.key_label}:"


class PinSource:
    """Where the user PIN comes from; never shown in a repr, a log or a message."""

    def __init__(self, read: Callable[[], str], where: str) -> None:
        self._read = read
        self.where = where

    def __repr__(self) -> str:
        return f"PinSource({self.where})"

    def read(self) -> str:
        return self._read()

    @classmethod
    def of(cls, settings: Pkcs11Settings, env: Mapping[str, str]) -> PinSource:
        if settings.pin_file:
            path = Path(settings.pin_file)

            def from_file() -> str:
                try:
                    return path.read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    raise ProviderRefused(
                        f"cannot read the PKCS#11 PIN file {path}: {exc.strerror or exc}"
                    ) from None

            return cls(from_file, f"file {path}")
        name = settings.pin_env
        if name not in env:
            raise ConfigError(f"pkcs11: the PIN variable {name} is not set")
        value = env[name]
        return cls(lambda: value, f"variable {name}")


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

    def usable_for(self, mechanism: str) -> list[str]:
        """The attributes this key lacks for `mechanism`, by name."""
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


# -- PKCS#11 errors ---------------------------------------------------------------------

#: Failures that leave the pool's sessions or login unusable: drop them and retry.
_SESSION_LOST = (
    "SessionHandleInvalid",
    "SessionClosed",
    "UserNotLoggedIn",
    "DeviceRemoved",
    "TokenNotPresent",
    "TokenNotRecognised",
    "DeviceError",
    "CryptokiNotInitialized",
)
#: Failures of the key or mechanism that retrying cannot fix.
_KEY_REFUSED = (
    "MechanismInvalid",
    "MechanismParamInvalid",
    "FunctionNotSupported",
    "KeyFunctionNotPermitted",
    "KeyTypeInconsistent",
    "KeySizeRange",
    "KeyNotWrappable",
    "KeyUnextractable",
    "WrappingKeyTypeInconsistent",
    "UnwrappingKeyTypeInconsistent",
)
#: What a token answers to a tampered, truncated or foreign blob (SoftHSM2 says
#: GeneralError to a GCM tag mismatch).
_BAD_BLOB = (
    "EncryptedDataInvalid",
    "EncryptedDataLenRange",
    "DataInvalid",
    "DataLenRange",
    "WrappedKeyInvalid",
    "WrappedKeyLenRange",
    "GeneralError",
    "FunctionFailed",
)


class _SessionLost(ProviderTransient):
    """A session-level failure; the pool of that generation is dropped."""


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def classify(exc: Exception, settings: Pkcs11Settings, operation: str) -> KmsplugError:
    """A PKCS#11 failure as an error an operator can act on; never the PIN or key bytes."""
    name = _name(exc)
    where = f"(token {settings.token_label!r}, key {settings.key_label!r}, {operation})"
    if name in ("PinIncorrect", "PinInvalid", "PinLenRange"):
        return ProviderRefused(
            f"PIN rejected by token {settings.token_label!r}: check the PIN file or variable; "
            "it is not retried until it changes"
        )
    if name == "PinLocked":
        return ProviderRefused(
            f"the user PIN of token {settings.token_label!r} is locked: the security officer "
            "must unlock it (softhsm2-util / pkcs11-tool --init-pin)"
        )
    if name == "PinExpired":
        return ProviderRefused(f"the user PIN of token {settings.token_label!r} has expired")
    if name == "NoSuchToken":
        return ProviderRefused(
            f"no token labelled {settings.token_label!r} in {settings.library} "
            "(list them with pkcs11-tool --module <library> -L)"
        )
    if name == "MultipleTokensReturned":
        return ProviderRefused(f"several tokens are labelled {settings.token_label!r}")
    if name in _SESSION_LOST:
        return _SessionLost(f"PKCS#11 session lost: {name} {where}")
    if name in _KEY_REFUSED:
        return ProviderRefused(
            f"the token refuses {settings.mechanism} with this key: {name}; check the key's "
            f"CKA_ENCRYPT/CKA_DECRYPT (aes-gcm) or CKA_WRAP/CKA_UNWRAP (aes-key-wrap) and "
            f"that the token supports the mechanism {where}"
        )
    return ProviderTransient(f"PKCS#11 call failed: {name} {where}")


# -- the session pool -------------------------------------------------------------------

#: Held around every call into a PKCS#11 module (see the module docstring).
_pkcs11_lock = threading.RLock()


def _load_library(path: str) -> Any:
    import pkcs11

    with _pkcs11_lock:  # also: two threads must not both C_Initialize one module
        try:
            return pkcs11.lib(path)
        except Exception as exc:
            raise ProviderRefused(
                f"cannot load the PKCS#11 library {path}: {_name(exc)} "
                "(install it, e.g. apt-get install softhsm2, or set --pkcs11-library)"
            ) from None


@dataclass
class _Session:
    session: Any
    generation: int
    keys: dict[bytes, list[Any]] = field(default_factory=dict)
    scanned_at: float = -1e9


class TokenPool:
    """Sessions on one token, shared by the providers of this process that use it."""

    def __init__(self, library: str, token_label: str, max_sessions: int) -> None:
        self.library = library
        self.token_label = token_label
        self.max_sessions = max_sessions
        self.users = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_sessions)
        self._idle: list[_Session] = []
        self._generation = 0
        self._token: Any = None
        self._anchor: Any = None
        self._rejected_pin: bytes | None = None

    @contextmanager
    def session(self, pin: PinSource, settings: Pkcs11Settings) -> Iterator[_Session]:
        """A logged-in session for this thread; a lost session drops the whole pool."""
        if not self._slots.acquire(timeout=SESSION_WAIT):
            raise ProviderTransient(
                f"all {self.max_sessions} sessions of token {self.token_label!r} are busy"
            )
        try:
            if not _pkcs11_lock.acquire(timeout=SESSION_WAIT):
                raise ProviderTransient(f"the PKCS#11 module is busy (token {self.token_label!r})")
            try:
                current = self._take(pin, settings)
                broken = False
                try:
                    yield current
                except _SessionLost:
                    broken = True
                    self.reset(current.generation)
                    raise
                except KmsplugError:
                    raise  # the token answered: the session is fine
                except BaseException:
                    broken = True  # interrupted: an operation may be left half-done
                    raise
                finally:
                    self._give_back(current, broken)
            finally:
                _pkcs11_lock.release()
        finally:
            self._slots.release()

    def _take(self, pin: PinSource, settings: Pkcs11Settings) -> _Session:
        with self._lock:
            try:
                if self._anchor is None:
                    self._login(pin)
                if self._idle:
                    return self._idle.pop()
                return _Session(self._token.open(), self._generation)
            except KmsplugError:
                raise
            except Exception as exc:
                error = classify(exc, settings, "open session")
                if isinstance(error, _SessionLost):
                    self._drop()
                raise error from None

    def _login(self, pin: PinSource) -> None:
        """Open the session that holds the login (the caller holds the lock)."""
        from pkcs11.exceptions import PinIncorrect, UserAlreadyLoggedIn

        if self._token is None:
            self._token = _load_library(self.library).get_token(token_label=self.token_label)
        value = pin.read()
        digest = hashlib.sha256(value.encode()).digest()
        if digest == self._rejected_pin:
            raise ProviderRefused(
                f"PIN rejected by token {self.token_label!r} earlier: fix the PIN "
                f"({pin.where}); the same PIN is not tried again, so as not to lock it"
            )
        try:
            self._anchor = self._token.open(user_pin=value)
        except UserAlreadyLoggedIn:
            # Some other code of this process logged in to this token: share its login.
            self._anchor = self._token.open()
        except PinIncorrect:
            self._rejected_pin = digest
            raise
        finally:
            del value

    def _give_back(self, current: _Session, broken: bool) -> None:
        with self._lock:
            if not broken and current.generation == self._generation:
                self._idle.append(current)
                return
        _close_quietly(current.session)

    def reset(self, generation: int | None = None) -> None:
        """Drop every session (and the login) of `generation` (default: the current one)."""
        with _pkcs11_lock, self._lock:
            if generation is None or generation == self._generation:
                self._drop()

    def _drop(self) -> None:
        self._generation += 1
        idle, self._idle = self._idle, []
        anchor, self._anchor = self._anchor, None
        self._token = None
        for item in idle:
            _close_quietly(item.session)
        if anchor is not None:
            _close_quietly(anchor)  # last: closing it logs the process out of the token


def _close_quietly(session: Any) -> None:
    with suppress(Exception):
        session.close()


_pools: dict[tuple[str, str], TokenPool] = {}
_pools_lock = threading.Lock()


def _pool_for(settings: Pkcs11Settings) -> TokenPool:
    key = (settings.library, settings.token_label)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = TokenPool(
                settings.library, settings.token_label, settings.max_sessions
            )
        pool.users += 1
        return pool


def _release_pool(pool: TokenPool) -> None:
    with _pools_lock:
        pool.users -= 1
        if pool.users > 0:
            return
        if _pools.get((pool.library, pool.token_label)) is pool:
            del _pools[(pool.library, pool.token_label)]
    pool.reset()


# -- the provider -----------------------------------------------------------------------


class Pkcs11Kek(RemoteKek):
    kind = "pkcs11"

    def __init__(self, settings: Pkcs11Settings, pin: PinSource) -> None:
        settings.validate()
        self.settings = settings
        self._pin = pin
        self._limiter = anyio.CapacityLimiter(settings.max_sessions)
        self._pool = _pool_for(settings)
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

    def key_id_for(self, fp: bytes) -> str:
        return f"{self.settings.key_id_prefix}{fp.hex()}"

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

    async def _run(self, operation: str, call: Callable[[_Session], T]) -> T:
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

        # abandon_on_cancel: a hung token must not hold the caller past its deadline; the
        # thread finishes (or times out waiting for a session) on its own.
        return await anyio.to_thread.run_sync(
            in_thread, limiter=self._limiter, abandon_on_cancel=True
        )

    def _scan_session(self, current: _Session) -> list[KeyInfo]:
        """List the AES keys of the label in this session and remember their objects."""
        from pkcs11 import Attribute, KeyType, ObjectClass

        settings = self.settings
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
                    key_id=self.key_id_for(fp),
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

    def _objects(self, current: _Session, fp: bytes, *, rescan: bool = True) -> list[Any]:
        """This session's key objects of fingerprint `fp`, scanning the token when unknown."""
        keys = current.keys.get(fp)
        if not keys and rescan and time.monotonic() - current.scanned_at >= RESCAN_INTERVAL:
            self._scan_session(current)
            keys = current.keys.get(fp)
        return keys or []

    async def _scan(self) -> KeyInfo:
        found = await self._run("scan", self._scan_session)
        writer = choose_writer(found, self.settings)
        missing = writer.usable_for(self.settings.mechanism)
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

    async def wrap(self, plaintext: bytes) -> bytes:
        if not 0 < len(plaintext) <= MAX_WRAP_INPUT:
            raise ValueError(f"pkcs11 wraps 1 to {MAX_WRAP_INPUT} bytes")
        writer = await self._current_writer()
        fp = writer.fingerprint
        note_call(key_version=fp.hex())
        gcm = self.settings.mechanism == "aes-gcm"

        def call(current: _Session) -> bytes:
            keys = self._objects(current, fp)
            if not keys:
                raise ProviderRefused(
                    f"the write key {writer.key_id} is no longer in token "
                    f"{self.settings.token_label!r}: restore it, or refresh to pick the newest"
                )
            if gcm:
                return (
                    bytes([TAG_GCM])
                    + fp
                    + _gcm_seal(current, keys[0], plaintext, writer.key_id.encode())
                )
            return bytes([TAG_KEY_WRAP]) + fp + _key_wrap(current, keys[0], plaintext)

        return await self._run("wrap", call)

    def _parse(self, wrapped: bytes) -> tuple[int, bytes, bytes]:
        head = 1 + FINGERPRINT_BYTES
        if len(wrapped) <= head or wrapped[0] not in (TAG_GCM, TAG_KEY_WRAP):
            raise InvalidCiphertext("invalid ciphertext")
        tag, fp, body = wrapped[0], wrapped[1:head], wrapped[head:]
        if tag == TAG_GCM and len(body) < IV_BYTES + GCM_TAG_BYTES + 1:
            raise InvalidCiphertext("invalid ciphertext")
        return tag, fp, body

    async def unwrap(self, wrapped: bytes) -> bytes:
        tag, fp, body = self._parse(wrapped)
        note_call(key_version=fp.hex())
        key_id = self.key_id_for(fp)

        def call(current: _Session) -> bytes:
            keys = self._objects(current, fp)
            if not keys:
                log.warning(
                    "pkcs11: no key with the fingerprint of %s in token %r (destroyed?)",
                    key_id,
                    self.settings.token_label,
                )
                raise InvalidCiphertext("invalid ciphertext")
            last: Exception | None = None
            for key in keys:
                try:
                    if tag == TAG_GCM:
                        return _gcm_open(current, key, body, key_id.encode())
                    return _key_unwrap(current, key, body)
                except Exception as exc:
                    last = exc
            assert last is not None
            raise self._opening_failed(current, keys[0], last, tag)

        return await self._run("unwrap", call)

    def _opening_failed(self, current: _Session, key: Any, exc: Exception, tag: int) -> Exception:
        """InvalidCiphertext when the blob is at fault, else the token's failure."""
        if _name(exc) not in _BAD_BLOB:
            return exc
        # A generic error can be the blob's fault (a GCM tag mismatch in SoftHSM2) or the
        # token's: a round trip through the same key tells them apart.
        try:
            if tag == TAG_GCM:
                probe = _gcm_seal(current, key, _PROBE, b"kmsplug-probe")
                ok = _gcm_open(current, key, probe, b"kmsplug-probe") == _PROBE
            else:
                ok = _key_unwrap(current, key, _key_wrap(current, key, _PROBE)) == _PROBE
        except Exception:
            return exc
        return InvalidCiphertext("invalid ciphertext") if ok else exc

    # -- the reference mock's ciphertexts ----------------------------------------------

    def claims_legacy(self, ciphertext: bytes) -> bool:
        """Our own blobs (direct mode) and the reference mock's `nonce || ct || tag`.

        Envelope asks the providers in turn and the first to claim a ciphertext decrypts
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
            _, fp, _ = self._parse(ciphertext)
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
        if not IV_BYTES + GCM_TAG_BYTES < len(ciphertext) <= IV_BYTES + MAX_WRAP_INPUT + 16:
            raise InvalidCiphertext("invalid ciphertext")
        aad = self.settings.key_label.encode()
        nonce, sealed = ciphertext[:IV_BYTES], ciphertext[IV_BYTES:]

        def call(current: _Session) -> bytes:
            if time.monotonic() - current.scanned_at >= RESCAN_INTERVAL or not current.keys:
                self._scan_session(current)  # every key of the label, old ones included
            keys = [key for group in current.keys.values() for key in group]
            last: Exception | None = None
            for key in keys:
                try:
                    return _gcm_open(current, key, nonce + sealed, aad)
                except Exception as exc:
                    last = exc
            if last is None:
                raise InvalidCiphertext("invalid ciphertext")
            raise self._opening_failed(current, keys[0], last, TAG_GCM)

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

        def supported(current: _Session) -> bool:
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
            await anyio.to_thread.run_sync(_release_pool, self._pool)


def _is_text(data: bytes) -> bool:
    return all(byte in _TEXT_BYTES for byte in data)


def _attribute(key: Any, attribute: Any, default: Any) -> Any:
    try:
        return key[attribute]
    except Exception:  # not defined for this key or token (AttributeTypeInvalid, ...)
        return default


def _gcm_seal(current: _Session, key: Any, plaintext: bytes, aad: bytes) -> bytes:
    from pkcs11 import GCMParams, Mechanism

    iv = bytes(current.session.generate_random(IV_BYTES * 8))
    params = GCMParams(iv, aad, GCM_TAG_BYTES * 8)
    sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    return iv + bytes(cast(bytes, sealed))


def _gcm_open(current: _Session, key: Any, body: bytes, aad: bytes) -> bytes:
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


def _key_wrap(current: _Session, key: Any, plaintext: bytes) -> bytes:
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    secret = current.session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
            Attribute.VALUE: _frame(plaintext),
            **_secret_template(),
        }
    )
    try:
        return bytes(key.wrap_key(secret, mechanism=Mechanism.AES_KEY_WRAP_PAD))
    finally:
        with suppress(Exception):
            secret.destroy()


def _key_unwrap(current: _Session, key: Any, body: bytes) -> bytes:
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
        return _unframe(bytes(secret[Attribute.VALUE]))
    finally:
        with suppress(Exception):
            secret.destroy()


def _frame(plaintext: bytes) -> bytes:
    """What key wrap encrypts: length(2) || plaintext || zeros to a multiple of 8 bytes.

    The length is inside the wrapped (authenticated) bytes: SoftHSM2's unwrap returns
    the RFC 5649 padding along with the secret, so it cannot be trusted to strip it.
    """
    framed = len(plaintext).to_bytes(2, "big") + plaintext
    return framed + bytes(-len(framed) % 8)


def _unframe(value: bytes) -> bytes:
    size = int.from_bytes(value[:2], "big")
    if len(value) < 2 + size or any(value[2 + size :]):
        raise InvalidCiphertext("invalid ciphertext")
    return value[2 : 2 + size]


# -- settings and factory -----------------------------------------------------------------


def pkcs11_settings_from_env(env: Mapping[str, str]) -> Pkcs11Settings:
    """Settings from KMSPLUG_PKCS11_* variables (see the module docstring)."""

    def get(name: str) -> str:
        return env.get(name, "").strip()

    pin_file = get("KMSPLUG_PKCS11_PIN_FILE")
    sessions = get("KMSPLUG_PKCS11_SESSIONS") or "2"
    if not sessions.isdigit():
        raise ConfigError("KMSPLUG_PKCS11_SESSIONS must be a number")
    settings = Pkcs11Settings(
        token_label=get("KMSPLUG_PKCS11_TOKEN"),
        key_label=get("KMSPLUG_PKCS11_KEY_LABEL"),
        library=get("KMSPLUG_PKCS11_LIBRARY") or DEFAULT_LIBRARY,
        pin_file=pin_file,
        pin_env="" if pin_file or "KMSPLUG_PKCS11_PIN" not in env else "KMSPLUG_PKCS11_PIN",
        key_id_hex=get("KMSPLUG_PKCS11_KEY_ID"),
        mechanism=get("KMSPLUG_PKCS11_MECHANISM") or "aes-gcm",
        max_sessions=int(sessions),
    )
    settings.validate()
    return settings


def pkcs11_provider(
    settings: Pkcs11Settings,
    env: Mapping[str, str],
    resilience: ResiliencePolicy | None = None,
) -> RemoteKek:
    """The PKCS#11 provider behind the resilience layer; the PIN from its file or `env`."""
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
    return Resilient(Pkcs11Kek(settings, pin), resilience)
