"""Vault authentication: a token kept valid for the Transit calls.

A token is static, or read from a file that is re-read when it changes (e.g. a Vault
Agent sink), or obtained by logging in: AppRole (role_id + secret_id or a secret_id
file), or Kubernetes / JWT (a role and a service-account token file). Tokens are renewed
(auth/token/renew-self) before they expire by a background task, logged in again when
renewal is refused or capped by the max TTL, and re-obtained once when Vault says
"permission denied" to a token it no longer knows. Tokens and secret_ids never appear in
messages, logs or reprs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import anyio

from kmsplug.errors import ProviderRefused, ProviderTransient
from kmsplug.providers.vault.connection import VaultConnection, auth_of, data_of, errors_text
from kmsplug.providers.vault.settings import VaultSettings

log = logging.getLogger(__name__)

#: Renew a token when this share of its TTL is spent (Vault's own watcher uses ~2/3).
RENEW_AT = 2 / 3


class VaultAuth:
    """The token of one provider: obtained, renewed and replaced as its source allows."""

    def __init__(self, settings: VaultSettings, connection: VaultConnection) -> None:
        self.settings = settings
        self._connection = connection
        self._token = ""
        self._ttl = 0.0  # seconds the token was last granted; 0: never expires
        self._renewable = False
        self._expires_at = math.inf  # monotonic
        self._renew_after = math.inf  # monotonic
        self._token_lock = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None
        self.renewals = 0
        self.logins = 0

    @property
    def token(self) -> str:
        """The token in use now ('' before the first call)."""
        return self._token

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never show in a message."""
        return (self._token, self.settings.token, self.settings.secret_id, self.settings.role_id)

    def describe(self) -> str:
        """For the preflight log: method, mount, expiry; never the token."""
        expiry = "no expiry" if not self._ttl else f"ttl {round(self._ttl)}s"
        renew = ", renewable" if self._renewable else ""
        login = f" at auth/{self.settings.login_mount}" if self.settings.method != "token" else ""
        return f"auth {self.settings.method}{login}: token {expiry}{renew}"

    def credential_seconds_left(self) -> float | None:
        if math.isinf(self._expires_at):
            return None
        return max(0.0, self._expires_at - time.monotonic())

    def _renew_due(self) -> bool:
        return time.monotonic() >= self._renew_after

    def _adopt(self, auth: Mapping[str, Any], token: str | None = None) -> None:
        """Take a token and its lease (a login's `auth`, a renewal's, or lookup-self data)."""
        self._token = token or str(auth.get("client_token") or "")
        self._ttl = float(auth.get("lease_duration") or auth.get("ttl") or 0)
        self._renewable = bool(auth.get("renewable"))
        now = time.monotonic()
        self._expires_at = now + self._ttl if self._ttl else math.inf
        self._renew_after = now + self._ttl * RENEW_AT if self._ttl else math.inf

    async def current_token(self) -> str:
        """A token to call with: obtained, renewed or replaced first when due."""
        if not self._token or self._renew_due():
            async with self._token_lock:
                if not self._token:
                    await self._obtain()
                elif self._renew_due():
                    await self._refresh_token()
        self._start_renewer()
        return self._token

    async def reload(self) -> None:
        """Read the token file again, or log in again, now."""
        await self._obtain()

    async def _obtain(self) -> None:
        """A token from the configured source: the setting, the file, or a login."""
        if self.settings.method != "token":
            await self._login()
            return
        token = await self._read_token_file() if self.settings.token_file else self.settings.token
        await self._adopt_token(token)

    async def _read_token_file(self) -> str:
        token = await self._read_secret_file(self.settings.token_file, "Vault token")
        if not token:
            raise ProviderRefused(f"the Vault token file {self.settings.token_file} is empty")
        return token

    async def _read_secret_file(self, path: str, what: str) -> str:
        try:
            return (await anyio.Path(path).read_text()).strip()
        except OSError as exc:
            raise ProviderRefused(
                f"cannot read the {what} file {path}: {type(exc).__name__}"
            ) from None

    async def _adopt_token(self, token: str) -> None:
        """Use a token given to us; learn its TTL (lookup-self) to renew it in time."""
        response = await self._connection.send("GET", "auth/token/lookup-self", None, token)
        if response.status_code == 200:
            self._adopt(data_of(response), token)
        elif response.status_code in (401, 403):
            # Expired or unknown, or a policy without lookup-self: the calls will tell.
            self._adopt({}, token)
        else:
            raise self._connection.error(response, "token lookup", self.secrets)

    async def _login(self) -> None:
        settings = self.settings
        mount = settings.login_mount
        body: dict[str, str]
        if settings.method == "approle":
            secret_id = settings.secret_id
            if settings.secret_id_file:
                secret_id = await self._read_secret_file(settings.secret_id_file, "secret_id")
            body = {"role_id": settings.role_id}
            if secret_id:
                body["secret_id"] = secret_id
        else:
            body = {
                "role": settings.role,
                "jwt": await self._read_secret_file(settings.jwt_file, "JWT"),
            }
        response = await self._connection.send(
            "POST", f"auth/{quote(mount, safe='/')}/login", body, None
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise self._connection.error(response, "login", self.secrets)
        auth = auth_of(response) if response.status_code == 200 else {}
        if not auth.get("client_token"):
            text = errors_text(response, (*self.secrets, *body.values()))
            what = "role_id and secret_id" if settings.method == "approle" else "role and JWT"
            raise ProviderRefused(
                f"Vault {settings.method} login at auth/{mount} refused: {text}; check the "
                f"{what} {self._connection.where()}"
            )
        self._adopt(auth)
        self.logins += 1
        log.info("vault login", extra={"method": settings.method, "mount": mount, "ttl": self._ttl})

    def _retry_renewal_soon(self) -> None:
        """Renewal failed for now: keep the token we have and try again shortly."""
        remaining = self._expires_at - time.monotonic()
        if remaining <= 0:
            raise ProviderTransient(
                f"the Vault token expired and renewal failed {self._connection.where()}"
            )
        self._renew_after = time.monotonic() + min(1.0, remaining / 4)

    async def _refresh_token(self) -> None:
        """Renew the token before it expires; log in again when renewal cannot help."""
        if self.settings.token_file:
            token = await self._read_token_file()
            if token != self._token:  # the file was rotated (e.g. by a Vault Agent)
                await self._adopt_token(token)
                return
        can_login = self.settings.method != "token"
        if self._renewable:
            previous = self._ttl
            try:
                response = await self._connection.send(
                    "POST", "auth/token/renew-self", {}, self._token
                )
            except ProviderTransient:
                self._retry_renewal_soon()
                return
            if response.status_code == 429 or response.status_code >= 500:
                self._retry_renewal_soon()
                return
            auth = auth_of(response) if response.status_code == 200 else {}
            if auth:
                self._adopt(auth, self._token)
                self.renewals += 1
                log.info("vault token renewed", extra={"ttl": self._ttl})
                if self._ttl >= previous * RENEW_AT:
                    return
                # Capped by the token's max TTL: a fresh login beats a dying token.
                if not can_login:
                    log.warning("vault token nears its max TTL", extra={"ttl": self._ttl})
                    return
        if can_login:
            await self._login()
            return
        # A token we can neither renew nor replace: use it while Vault accepts it.
        remaining = self._expires_at - time.monotonic()
        log.warning("vault token cannot be renewed", extra={"expires_in": round(remaining)})
        self._renew_after = math.inf

    async def recover(self, refused: str) -> str:
        """After a 403: "retry" with a new token, or why not ("policy" or "token")."""
        async with self._token_lock:
            if self._token != refused:
                return "retry"  # replaced meanwhile
            check = await self._connection.send("GET", "auth/token/lookup-self", None, refused)
            if check.status_code == 200:
                return "policy"  # the token is fine: its policy is what refuses
            if check.status_code not in (401, 403):
                raise self._connection.error(check, "token lookup", self.secrets)
            if self.settings.method != "token":
                await self._login()
                return "retry"
            if self.settings.token_file:
                token = await self._read_token_file()
                if token != refused:
                    await self._adopt_token(token)
                    return "retry"
            return "token"

    def _start_renewer(self) -> None:
        if self._renew_after < math.inf and (self._renewer is None or self._renewer.done()):
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        """Keep the token alive between calls (hierarchy mode calls Vault rarely)."""
        failures = 0
        while self._renew_after < math.inf:
            await anyio.sleep(max(self._renew_after - time.monotonic(), 0.05))
            try:
                async with self._token_lock:
                    if self._renew_due():
                        await self._refresh_token()
                failures = 0
            except Exception as exc:  # the next loop or the next call tries again
                failures += 1
                log.warning("vault token renewal failed", extra={"error": type(exc).__name__})
                await anyio.sleep(min(30.0, 0.25 * 2**failures))

    async def aclose(self) -> None:
        """Stop renewing."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
