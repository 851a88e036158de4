"""The PKCS#11 provider's settings, from the environment `serve` fills from its flags.

KMSPLUG_PKCS11_LIBRARY     PKCS#11 module (default /usr/lib/softhsm/libsofthsm2.so)
KMSPLUG_PKCS11_TOKEN       token label (required)
KMSPLUG_PKCS11_PIN_FILE    file holding the user PIN (re-read when a login is needed)
KMSPLUG_PKCS11_PIN         the user PIN itself (when no PIN file is given)
KMSPLUG_PKCS11_KEY_LABEL   AES key label (required)
KMSPLUG_PKCS11_KEY_ID      hex CKA_ID of the write key (optional: see the keys module)
KMSPLUG_PKCS11_MECHANISM   aes-gcm (default) | aes-key-wrap
KMSPLUG_PKCS11_SESSIONS    worker threads and sessions (default 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kmsplug.errors import ConfigError, ProviderRefused
from kmsplug.providers.shared import env_value

DEFAULT_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
MECHANISMS = ("aes-gcm", "aes-key-wrap")
#: Hex digits of the key fingerprint at the end of a key_id (see the keys module).
_FINGERPRINT_HEX = 16


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
        """ConfigError naming the setting that is missing or wrong."""
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
        if len(self.key_id_prefix.encode()) + _FINGERPRINT_HEX > 255:
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


def settings_from_env(env: Mapping[str, str]) -> Pkcs11Settings:
    """Settings from KMSPLUG_PKCS11_* variables (see the module docstring)."""
    pin_file = env_value(env, "KMSPLUG_PKCS11_PIN_FILE")
    sessions = env_value(env, "KMSPLUG_PKCS11_SESSIONS", default="2")
    if not sessions.isdigit():
        raise ConfigError("KMSPLUG_PKCS11_SESSIONS must be a number")
    settings = Pkcs11Settings(
        token_label=env_value(env, "KMSPLUG_PKCS11_TOKEN"),
        key_label=env_value(env, "KMSPLUG_PKCS11_KEY_LABEL"),
        library=env_value(env, "KMSPLUG_PKCS11_LIBRARY", default=DEFAULT_LIBRARY),
        pin_file=pin_file,
        pin_env="" if pin_file or "KMSPLUG_PKCS11_PIN" not in env else "KMSPLUG_PKCS11_PIN",
        key_id_hex=env_value(env, "KMSPLUG_PKCS11_KEY_ID"),
        mechanism=env_value(env, "KMSPLUG_PKCS11_MECHANISM", default="aes-gcm"),
        max_sessions=int(sessions),
    )
    settings.validate()
    return settings
