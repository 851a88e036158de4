"""PKCS#11 sessions: the pool of logged-in sessions on a token, and what a token's
failure means.

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
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from kmsplug.errors import KmsplugError, ProviderRefused, ProviderTransient
from kmsplug.providers.pkcs11.settings import PinSource, Pkcs11Settings

SESSION_WAIT = 5.0
"""Seconds a call waits for a free session or for the module before it gives up."""

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
BAD_BLOB = (
    "EncryptedDataInvalid",
    "EncryptedDataLenRange",
    "DataInvalid",
    "DataLenRange",
    "WrappedKeyInvalid",
    "WrappedKeyLenRange",
    "GeneralError",
    "FunctionFailed",
)


class SessionLost(ProviderTransient):
    """A session-level failure; the pool of that generation is dropped."""


def error_name(exc: BaseException) -> str:
    """python-pkcs11 names its exceptions after the PKCS#11 return values."""
    return type(exc).__name__


def classify(exc: Exception, settings: Pkcs11Settings, operation: str) -> KmsplugError:
    """A PKCS#11 failure as an error an operator can act on; never the PIN or key bytes."""
    name = error_name(exc)
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
        return SessionLost(f"PKCS#11 session lost: {name} {where}")
    if name in _KEY_REFUSED:
        return ProviderRefused(
            f"the token refuses {settings.mechanism} with this key: {name}; check the key's "
            f"CKA_ENCRYPT/CKA_DECRYPT (aes-gcm) or CKA_WRAP/CKA_UNWRAP (aes-key-wrap) and "
            f"that the token supports the mechanism {where}"
        )
    return ProviderTransient(f"PKCS#11 call failed: {name} {where}")


#: Held around every call into a PKCS#11 module (see the module docstring).
pkcs11_lock = threading.RLock()


def _load_library(path: str) -> Any:
    import pkcs11

    with pkcs11_lock:  # also: two threads must not both C_Initialize one module
        try:
            return pkcs11.lib(path)
        except Exception as exc:
            raise ProviderRefused(
                f"cannot load the PKCS#11 library {path}: {error_name(exc)} "
                "(install it, e.g. apt-get install softhsm2, or set --pkcs11-library)"
            ) from None


@dataclass
class Session:
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
        self._idle: list[Session] = []
        self._generation = 0
        self._token: Any = None
        self._anchor: Any = None
        self._rejected_pin: bytes | None = None

    @contextmanager
    def session(self, pin: PinSource, settings: Pkcs11Settings) -> Iterator[Session]:
        """A logged-in session for this thread; a lost session drops the whole pool."""
        if not self._slots.acquire(timeout=SESSION_WAIT):
            raise ProviderTransient(
                f"all {self.max_sessions} sessions of token {self.token_label!r} are busy"
            )
        try:
            if not pkcs11_lock.acquire(timeout=SESSION_WAIT):
                raise ProviderTransient(f"the PKCS#11 module is busy (token {self.token_label!r})")
            try:
                current = self._take(pin, settings)
                broken = False
                try:
                    yield current
                except SessionLost:
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
                pkcs11_lock.release()
        finally:
            self._slots.release()

    def _take(self, pin: PinSource, settings: Pkcs11Settings) -> Session:
        with self._lock:
            try:
                if self._anchor is None:
                    self._login(pin)
                if self._idle:
                    return self._idle.pop()
                return Session(self._token.open(), self._generation)
            except KmsplugError:
                raise
            except Exception as exc:
                error = classify(exc, settings, "open session")
                if isinstance(error, SessionLost):
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

    def _give_back(self, current: Session, broken: bool) -> None:
        with self._lock:
            if not broken and current.generation == self._generation:
                self._idle.append(current)
                return
        _close_quietly(current.session)

    def reset(self, generation: int | None = None) -> None:
        """Drop every session (and the login) of `generation` (default: the current one)."""
        with pkcs11_lock, self._lock:
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


def pool_for(settings: Pkcs11Settings) -> TokenPool:
    """The pool of the settings' token, shared with this process's other providers on it."""
    key = (settings.library, settings.token_label)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = TokenPool(
                settings.library, settings.token_label, settings.max_sessions
            )
        pool.users += 1
        return pool


def release_pool(pool: TokenPool) -> None:
    """One user of `pool` is done; the last one closes its sessions and logs out."""
    with _pools_lock:
        pool.users -= 1
        if pool.users > 0:
            return
        if _pools.get((pool.library, pool.token_label)) is pool:
            del _pools[(pool.library, pool.token_label)]
    pool.reset()
