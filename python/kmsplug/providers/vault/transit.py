"""HashiCorp Vault / OpenBao Transit: a Transit key (aes256-gcm96 by default) as the KEK.

The resilience layer adds the deadline, retries, quota and audit; this module only speaks
Transit, over `connection`, with the token `auth` keeps.

key_id is `vault:<mount>/<key>:v<latest_version>`: a Transit rotation makes a new
version, so a new key_id, never a reused one. wrap returns Transit's own ciphertext text
(`vault:vN:<base64>`), which is also what FalcoSuessgott/vault-kubernetes-kms stored, so
its ciphertexts (and its v2 key_ids, the bare version numbers "1", "2", ...) are
recognised and decrypted through Transit as they are, as are the bare texts older kmsplug
releases wrote in direct mode. kmsplug's direct mode now frames the text in kmsplug's
format (mode 2); `--compat vault` writes the bare text under the peer's key_id (the bare
version) for a rollback to vault-kubernetes-kms. The frame's key_id is not bound into
Transit (its associated_data would do it, but a key_id made before a rotation names an
older version than Transit used): a frame whose key_id was altered to another of this
key's is read, as a bare text under any of this key's key_ids is.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from kmsplug.errors import InvalidCiphertext, ProviderRefused, ProviderTransient
from kmsplug.providers.base import KekProvider, Secret
from kmsplug.providers.shared import note_call
from kmsplug.providers.vault.auth import VaultAuth
from kmsplug.providers.vault.connection import VaultConnection, data_of, server_of
from kmsplug.providers.vault.settings import VaultSettings

log = logging.getLogger(__name__)

#: Transit ciphertext: what wrap returns and what vault-kubernetes-kms stored.
_TRANSIT_TEXT = re.compile(rb"vault:v([0-9]{1,10}):[A-Za-z0-9+/]+={0,2}")
_VERSION_NUMBER = re.compile(r"[0-9]{1,10}")
_OUR_VERSION = re.compile(r"v[0-9]{1,10}|unknown")  # the version part of our key_ids


def looks_like_transit_ciphertext(ciphertext: bytes) -> bool:
    """Transit's `vault:vN:<base64>` text, as vault-kubernetes-kms stores it."""
    return _TRANSIT_TEXT.fullmatch(ciphertext) is not None


def _ciphertext_version(ciphertext: bytes) -> int | None:
    match = _TRANSIT_TEXT.fullmatch(ciphertext)
    return int(match.group(1)) if match else None


def _policy_hint(settings: VaultSettings) -> str:
    mount, key = settings.transit, settings.key
    return (
        f'grant capability "update" on "{mount}/encrypt/{key}" and "{mount}/decrypt/{key}", '
        f'and "read" on "{mount}/keys/{key}", e.g. path "{mount}/decrypt/{key}" '
        '{ capabilities = ["update"] }'
    )


class VaultKek(KekProvider):
    kind = "vault"

    def __init__(self, settings: VaultSettings, http: httpx.AsyncClient | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.key_version = 0
        self.key_type = ""
        self.connection = VaultConnection(settings, http)
        self.auth = VaultAuth(settings, self.connection)
        mount, key = quote(settings.transit, safe="/"), quote(settings.key, safe="")
        self._paths = {
            "encrypt": f"{mount}/encrypt/{key}",
            "decrypt": f"{mount}/decrypt/{key}",
            "read": f"{mount}/keys/{key}",
        }

    # -- identity ----------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        if self.settings.compat_vault:  # vault-kubernetes-kms's: the bare version
            return str(self.key_version)
        version = f"v{self.key_version}" if self.key_version else "unknown"
        return self.settings.key_id_prefix + version

    def owns(self, key_id: str) -> bool:
        # Only the forms key_id produces: a stray suffix is a key_id we never issued.
        version = key_id.removeprefix(self.settings.key_id_prefix)
        if version != key_id and _OUR_VERSION.fullmatch(version):
            return True
        if key_id in self.settings.legacy_key_ids:
            return True
        bare_versions = self.settings.legacy_version_key_ids or self.settings.compat_vault
        return bare_versions and bool(_VERSION_NUMBER.fullmatch(key_id))

    def writes_peer_format(self) -> bool:
        return self.settings.compat_vault

    def claims_legacy(self, ciphertext: bytes) -> bool:
        return looks_like_transit_ciphertext(ciphertext)

    def _saw_version(self, version: object) -> None:
        """Note the key version Vault reported; it only moves forward (a rotation)."""
        if isinstance(version, int) and version > self.key_version:
            self.key_version = version

    # -- credentials -------------------------------------------------------------------

    def credential_seconds_left(self) -> float | None:
        return self.auth.credential_seconds_left()

    async def reload_credentials(self) -> None:
        await self.auth.reload()

    # -- Transit -----------------------------------------------------------------------

    async def _request(
        self, operation: str, method: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One Transit call with our token; a token Vault forgot is re-obtained once."""
        connection, auth = self.connection, self.auth
        token = await auth.current_token()
        path = self._paths[operation]
        response = await connection.send(method, path, body, token)
        verdict = "policy"
        if response.status_code in (401, 403):
            verdict = await auth.recover(token)
            if verdict == "retry":
                response = await connection.send(method, path, body, auth.token)
                verdict = "policy"
        if response.status_code in (401, 403):
            if verdict == "token":
                raise ProviderRefused(
                    "Vault refused the token: expired, revoked or unknown (or its policy "
                    "lacks auth/token/lookup-self); give a valid one (VAULT_TOKEN or "
                    "KMSPLUG_VAULT_TOKEN_FILE) or use AppRole / Kubernetes auth "
                    f"{connection.where()}"
                )
            capability = "read" if operation == "read" else "update"
            raise ProviderRefused(
                f'Vault denied {operation}: the token\'s policy lacks "{capability}" on '
                f'"{path}" (or the key does not exist); {_policy_hint(self.settings)} '
                f"{connection.where()}"
            )
        if response.status_code >= 300:
            raise connection.error(response, operation, auth.secrets)
        return data_of(response)

    async def read_key(self) -> dict[str, Any]:
        return await self._request("read", "GET")

    async def refresh(self) -> None:
        """Re-read the key's latest version; a Transit rotation changes our key_id."""
        meta = await self.read_key()
        self.key_type = str(meta.get("type") or "")
        self._saw_version(meta.get("latest_version"))
        note_call(key_version=str(self.key_version))

    async def wrap(self, plaintext: Secret) -> bytes:
        # The JSON body needs text: this base64 str is a copy no one can wipe (security.md).
        data = await self._request(
            "encrypt", "POST", {"plaintext": base64.b64encode(plaintext).decode()}
        )
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str) or not _TRANSIT_TEXT.fullmatch(ciphertext.encode()):
            raise ProviderTransient(
                f"Transit encrypt returned no ciphertext {self.connection.where()}"
            )
        version = data.get("key_version", _ciphertext_version(ciphertext.encode()))
        note_call(key_version=str(version))
        self._saw_version(version)  # encrypt uses the latest version: it may have moved
        return ciphertext.encode("ascii")

    async def unwrap(self, wrapped: bytes) -> bytes:
        version = _ciphertext_version(wrapped)
        if version is None:
            raise InvalidCiphertext
        data = await self._request("decrypt", "POST", {"ciphertext": wrapped.decode("ascii")})
        note_call(key_version=str(version))
        try:
            return base64.b64decode(str(data["plaintext"]), validate=True)
        except (KeyError, binascii.Error):
            raise ProviderTransient("Transit decrypt returned malformed plaintext") from None

    async def unwrap_legacy(self, ciphertext: bytes) -> bytes:
        """Decrypt what vault-kubernetes-kms stored: the Transit ciphertext text itself."""
        return await self.unwrap(ciphertext)

    async def preflight(self) -> list[str]:
        """Check the key before serving; raise ProviderRefused with what to fix."""
        meta = await self.read_key()
        problems = []
        key_type = str(meta.get("type") or "")
        if key_type not in self.settings.allowed_types:
            problems.append(
                f"key type is {key_type}, allowed: {', '.join(self.settings.allowed_types)}"
            )
        if not meta.get("supports_encryption") or not meta.get("supports_decryption"):
            problems.append("the key does not support encryption and decryption")
        if meta.get("derived"):
            problems.append("the key is derived (needs a context): use a non-derived key")
        if problems:
            raise ProviderRefused(
                f"vault key {self.settings.transit}/{self.settings.key}: " + "; ".join(problems)
            )
        self.key_type = key_type
        self._saw_version(meta.get("latest_version"))
        await self.health()
        return [
            f"key {self.settings.transit}/{self.settings.key} version {self.key_version} "
            f"({key_type}) on {self.connection.server} is usable",
            self.auth.describe(),
        ]

    async def aclose(self) -> None:
        await self.auth.aclose()
        await self.connection.aclose()


def build(settings: VaultSettings, env: Mapping[str, str]) -> VaultKek:
    """The Vault Transit provider; credentials the settings lack come from `env`."""
    settings = settings.with_credentials_from(env)
    kek = VaultKek(settings)
    login = f" at auth/{settings.login_mount}" if settings.method != "token" else ""
    source = " (file)" if settings.method == "token" and settings.token_file else ""
    log.info(
        "vault auth: %s%s%s on %s", settings.method, login, source, server_of(settings.address)
    )
    return kek
