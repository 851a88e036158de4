"""HashiCorp Vault / OpenBao Transit: a Transit key (aes256-gcm96 by default) as the KEK.

HTTP goes through httpx's async client rather than hvac: hvac is synchronous (requests),
so it would need worker threads as the Alibaba SDK does, and it is untyped; the few
Transit and auth endpoints used here are plain JSON, and httpx gives pooled keep-alive
connections on the event loop, timeouts and TLS with a CA bundle. The resilience layer
adds the deadline, retries, quota and audit; this module only speaks Vault.

key_id is `vault:<mount>/<key>:v<latest_version>`: a Transit rotation makes a new
version, so a new key_id, never a reused one. wrap returns Transit's own ciphertext text
(`vault:vN:<base64>`), which is also what FalcoSuessgott/vault-kubernetes-kms stored, so
its ciphertexts (and its v2 key_ids, the bare version numbers "1", "2", ...) are
recognised and decrypted through Transit as they are.

Authentication: a token (static, or a file re-read when it changes, e.g. a Vault Agent
sink), AppRole (role_id + secret_id or a secret_id file), or Kubernetes / JWT (a role and
a service-account token file). Tokens are renewed (auth/token/renew-self) before they
expire by a background task, logged in again when renewal is refused or capped by the
max TTL, and re-obtained once when Vault says "permission denied" to a token it no
longer knows. Tokens and secret_ids never appear in messages, logs or reprs.

Environment (`vault_settings_from_env`; a KMSPLUG_VAULT_* name wins over the Vault one):

    VAULT_ADDR / KMSPLUG_VAULT_ADDR             server URL (required), https://host:8200
    VAULT_NAMESPACE / KMSPLUG_VAULT_NAMESPACE   namespace (X-Vault-Namespace)
    VAULT_CACERT / KMSPLUG_VAULT_CACERT         CA bundle (PEM) for the server's TLS
    KMSPLUG_VAULT_TRANSIT_MOUNT                 Transit mount path (default transit)
    KMSPLUG_VAULT_TRANSIT_KEY                   Transit key name (required)
    KMSPLUG_VAULT_AUTH                          token | approle | kubernetes | jwt
                                                (default: inferred from what is set)
    KMSPLUG_VAULT_AUTH_MOUNT                    auth mount (default: the method's name)
    VAULT_TOKEN / KMSPLUG_VAULT_TOKEN           token
    KMSPLUG_VAULT_TOKEN_FILE                    file holding the token (re-read)
    KMSPLUG_VAULT_ROLE_ID                       AppRole role_id
    KMSPLUG_VAULT_SECRET_ID                     AppRole secret_id
    KMSPLUG_VAULT_SECRET_ID_FILE                file holding the secret_id (re-read)
    KMSPLUG_VAULT_ROLE                          Kubernetes / JWT auth role
    KMSPLUG_VAULT_JWT_FILE                      JWT file (default: the pod's SA token)
    KMSPLUG_VAULT_TIMEOUT                       seconds per HTTP request (default 2)
    KMSPLUG_VAULT_LEGACY_KEY_IDS                comma-separated extra v2 key_ids to own
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from kmsplug.errors import (
    ConfigError,
    InvalidCiphertext,
    KmsplugError,
    ProviderRefused,
    ProviderThrottled,
    ProviderTransient,
)
from kmsplug.providers.base import RemoteKek
from kmsplug.providers.resilient import ResiliencePolicy, Resilient, note_call

log = logging.getLogger(__name__)

ALLOWED_TYPES_DEFAULT = ("aes256-gcm96", "chacha20-poly1305")
AUTH_METHODS = ("token", "approle", "kubernetes", "jwt")
SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
#: Transit ciphertext: what wrap returns and what vault-kubernetes-kms stored.
_TRANSIT_TEXT = re.compile(rb"vault:v([0-9]{1,10}):[A-Za-z0-9+/]+={0,2}")
_VERSION_NUMBER = re.compile(r"[0-9]{1,10}")
_OUR_VERSION = re.compile(r"v[0-9]{1,10}|unknown")  # the version part of our key_ids
#: Renew a token when this share of its TTL is spent (Vault's own watcher uses ~2/3).
RENEW_AT = 2 / 3


@dataclass(frozen=True, slots=True)
class VaultSettings:
    address: str
    """Server URL, e.g. https://vault.example:8200 (VAULT_ADDR)."""
    key: str
    """Transit key name."""
    mount: str = "transit"
    namespace: str = ""
    auth: str = ""
    """token | approle | kubernetes | jwt; empty: inferred from the fields set."""
    auth_mount: str = ""
    """Auth method mount path; empty: the method's name (approle, kubernetes, jwt)."""
    token: str = field(default="", repr=False)
    token_file: str = ""
    role_id: str = field(default="", repr=False)
    secret_id: str = field(default="", repr=False)
    secret_id_file: str = ""
    role: str = ""
    """Kubernetes / JWT auth role."""
    jwt_file: str = SA_TOKEN_FILE
    ca_cert: str = ""
    """CA bundle (PEM) that signed the server's certificate; empty: the system's."""
    timeout: float = 2.0
    """Seconds per HTTP request (the resilience deadline bounds the whole operation)."""
    allowed_types: tuple[str, ...] = ALLOWED_TYPES_DEFAULT
    legacy_key_ids: tuple[str, ...] = ()
    """v2 key_ids another plugin reported for this key (besides bare version numbers)."""
    legacy_version_key_ids: bool = True
    """Own the bare version numbers ("1", "2", ...) vault-kubernetes-kms reports as key_id."""

    @property
    def method(self) -> str:
        """The auth method in use, explicit or inferred."""
        if self.auth:
            return self.auth
        if self.role_id:
            return "approle"
        if self.role:
            return "kubernetes"
        return "token"

    @property
    def login_mount(self) -> str:
        return (self.auth_mount or self.method).strip("/")

    @property
    def transit(self) -> str:
        return self.mount.strip("/")


def _server(address: str) -> str:
    """scheme://host:port of the address, for messages (never any userinfo or path)."""
    try:
        url = httpx.URL(address)
    except (httpx.InvalidURL, TypeError):
        return "?"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def _policy_hint(settings: VaultSettings) -> str:
    mount, key = settings.transit, settings.key
    return (
        f'grant capability "update" on "{mount}/encrypt/{key}" and "{mount}/decrypt/{key}", '
        f'and "read" on "{mount}/keys/{key}", e.g. path "{mount}/decrypt/{key}" '
        '{ capabilities = ["update"] }'
    )


def _ciphertext_version(ciphertext: bytes) -> int | None:
    match = _TRANSIT_TEXT.fullmatch(ciphertext)
    return int(match.group(1)) if match else None


def looks_like_transit_ciphertext(ciphertext: bytes) -> bool:
    """Transit's `vault:vN:<base64>` text, as vault-kubernetes-kms stores it."""
    return _TRANSIT_TEXT.fullmatch(ciphertext) is not None


def _ssl_context(settings: VaultSettings) -> ssl.SSLContext | bool:
    if not settings.ca_cert:
        return True
    try:
        return ssl.create_default_context(cafile=settings.ca_cert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"vault: cannot load the CA bundle {settings.ca_cert} (VAULT_CACERT): "
            f"{type(exc).__name__}"
        ) from None


def _errors_text(response: httpx.Response, secrets: tuple[str, ...]) -> str:
    """Vault's error strings, one line, bounded, with any secret of ours blanked out."""
    try:
        payload = response.json()
        errors = payload.get("errors") if isinstance(payload, dict) else None
    except ValueError:
        errors = None
    if isinstance(errors, list) and errors:
        text = "; ".join(" ".join(str(item).split()) for item in errors)
    else:
        text = f"HTTP {response.status_code}"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:200]


class VaultKek(RemoteKek):
    kind = "vault"

    def __init__(self, settings: VaultSettings, http: httpx.AsyncClient | None = None) -> None:
        if not settings.address.startswith(("http://", "https://")):
            raise ConfigError("vault: the address (VAULT_ADDR) must be an http(s):// URL")
        if not settings.key or "/" in settings.key:
            raise ConfigError("vault: the Transit key name (KMSPLUG_VAULT_TRANSIT_KEY) is required")
        if not settings.transit:
            raise ConfigError("vault: the Transit mount (KMSPLUG_VAULT_TRANSIT_MOUNT) is empty")
        method = settings.method
        if method not in AUTH_METHODS:
            raise ConfigError(f"vault: auth method must be one of {', '.join(AUTH_METHODS)}")
        if method == "token" and not (settings.token or settings.token_file):
            raise ConfigError(
                "vault: no credentials (VAULT_TOKEN, a token file, AppRole or a role)"
            )
        if method == "approle" and not settings.role_id:
            raise ConfigError("vault: AppRole needs a role_id (KMSPLUG_VAULT_ROLE_ID)")
        if method in ("kubernetes", "jwt") and not settings.role:
            raise ConfigError(f"vault: {method} auth needs a role (KMSPLUG_VAULT_ROLE)")
        if settings.timeout <= 0:
            raise ConfigError("vault: the timeout must be positive")
        self.settings = settings
        self.key_version = 0
        self.key_type = ""
        self._server = _server(settings.address)
        if len(self._key_prefix) + 12 > 255:
            raise ConfigError("vault: mount and key name are too long for a key_id")
        if settings.address.startswith("http://") and not _loopback(settings.address):
            log.warning("vault address is plain http: tokens and DEKs cross the network in clear")
        self._http = http or httpx.AsyncClient(
            base_url=settings.address.rstrip("/") + "/v1/",
            verify=_ssl_context(settings),
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=True,  # a standby without request forwarding redirects
            headers={"X-Vault-Request": "true", "User-Agent": "kmsplug"},
        )
        mount, key = quote(settings.transit, safe="/"), quote(settings.key, safe="")
        self._paths = {
            "encrypt": f"{mount}/encrypt/{key}",
            "decrypt": f"{mount}/decrypt/{key}",
            "read": f"{mount}/keys/{key}",
        }
        # token state
        self._token = ""
        self._ttl = 0.0  # seconds the token was last granted; 0: never expires
        self._renewable = False
        self._expires_at = math.inf  # monotonic
        self._renew_after = math.inf  # monotonic
        self._token_lock = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None
        self.renewals = 0
        self.logins = 0

    # -- identity ----------------------------------------------------------------------

    @property
    def _key_prefix(self) -> str:
        return f"vault:{self.settings.transit}/{self.settings.key}:"

    @property
    def key_id(self) -> str:
        version = f"v{self.key_version}" if self.key_version else "unknown"
        return self._key_prefix + version

    def owns(self, key_id: str) -> bool:
        # Only the forms key_id produces: a stray suffix is a key_id we never issued.
        version = key_id.removeprefix(self._key_prefix)
        if version != key_id and _OUR_VERSION.fullmatch(version):
            return True
        if key_id in self.settings.legacy_key_ids:
            return True
        return self.settings.legacy_version_key_ids and bool(_VERSION_NUMBER.fullmatch(key_id))

    def claims_legacy(self, ciphertext: bytes) -> bool:
        return looks_like_transit_ciphertext(ciphertext)

    def _saw_version(self, version: object) -> None:
        """Note the key version Vault reported; it only moves forward (a rotation)."""
        if isinstance(version, int) and version > self.key_version:
            self.key_version = version

    # -- HTTP --------------------------------------------------------------------------

    @property
    def _secrets(self) -> tuple[str, ...]:
        return (self._token, self.settings.token, self.settings.secret_id, self.settings.role_id)

    def _where(self) -> str:
        ns = f", namespace {self.settings.namespace}" if self.settings.namespace else ""
        return f"(Vault {self._server}{ns}, key {self.settings.transit}/{self.settings.key})"

    async def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, token: str | None
    ) -> httpx.Response:
        headers = {}
        if token:
            headers["X-Vault-Token"] = token
        if self.settings.namespace:
            headers["X-Vault-Namespace"] = self.settings.namespace
        try:
            response = await self._http.request(
                method, path, json=dict(body) if body is not None else None, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise ProviderTransient(
                f"Vault did not answer in time ({type(exc).__name__}) {self._where()}"
            ) from None
        except httpx.TransportError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise ProviderRefused(
                    f"Vault's TLS certificate is not trusted: set --vault-ca-cert to the CA "
                    f"bundle that signed it {self._where()}"
                ) from None
            raise ProviderTransient(
                f"Vault unreachable ({type(exc).__name__}) {self._where()}"
            ) from None
        request_id = ""
        with contextlib.suppress(ValueError):
            payload = response.json()
            if isinstance(payload, dict):
                request_id = str(payload.get("request_id") or "")
        note_call(request_id=request_id)
        return response

    def _error(self, response: httpx.Response, operation: str) -> KmsplugError:
        """Turn a failed answer into an error an operator can act on (not 401/403)."""
        status = response.status_code
        text = _errors_text(response, self._secrets)
        where = self._where()
        if status == 429:
            return ProviderThrottled(f"Vault rate limit quota exceeded {where}")
        if status == 503 and "sealed" in text.lower():
            return ProviderTransient(f"Vault is sealed: unseal it {where}")
        if status >= 500 or status in (412, 472, 473):
            return ProviderTransient(f"Vault error HTTP {status}: {text} {where}")
        if status == 404:
            return ProviderRefused(
                f"Transit key or mount not found: check KMSPLUG_VAULT_TRANSIT_MOUNT and "
                f"KMSPLUG_VAULT_TRANSIT_KEY (and the namespace) {where}"
            )
        lowered = text.lower()
        if "key not found" in lowered:
            return ProviderRefused(f"Transit key not found: create it or fix its name {where}")
        if operation == "decrypt" and "disallowed by policy" in lowered:
            return ProviderRefused(
                "the ciphertext's key version is below the Transit key's min_decryption_version: "
                f"lower it (POST {self.settings.transit}/keys/{self.settings.key}/config) or "
                f"re-encrypt the Secrets (kmsplug migrate) before raising it {where}"
            )
        if operation == "decrypt" and ("cipher" in lowered or "decrypt" in lowered):
            return InvalidCiphertext("invalid ciphertext")
        return ProviderRefused(f"Vault refused {operation}: {text} {where}")

    async def _request(
        self, operation: str, method: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One Transit call with our token; a token Vault forgot is re-obtained once."""
        token = await self._current_token()
        path = self._paths[operation]
        response = await self._send(method, path, body, token)
        verdict = "policy"
        if response.status_code in (401, 403):
            verdict = await self._recover(token)
            if verdict == "retry":
                response = await self._send(method, path, body, self._token)
                verdict = "policy"
        if response.status_code in (401, 403):
            if verdict == "token":
                raise ProviderRefused(
                    "Vault refused the token: expired, revoked or unknown (or its policy "
                    "lacks auth/token/lookup-self); give a valid one (VAULT_TOKEN or "
                    f"KMSPLUG_VAULT_TOKEN_FILE) or use AppRole / Kubernetes auth {self._where()}"
                )
            capability = "read" if operation == "read" else "update"
            raise ProviderRefused(
                f'Vault denied {operation}: the token\'s policy lacks "{capability}" on '
                f'"{path}" (or the key does not exist); {_policy_hint(self.settings)} '
                f"{self._where()}"
            )
        if response.status_code >= 300:
            raise self._error(response, operation)
        return _data(response)

    # -- tokens ------------------------------------------------------------------------

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

    async def _current_token(self) -> str:
        if not self._token or self._renew_due():
            async with self._token_lock:
                if not self._token:
                    await self._obtain()
                elif self._renew_due():
                    await self._refresh_token()
        self._start_renewer()
        return self._token

    async def reload_credentials(self) -> None:
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
        response = await self._send("GET", "auth/token/lookup-self", None, token)
        if response.status_code == 200:
            self._adopt(_data(response), token)
        elif response.status_code in (401, 403):
            # Expired or unknown, or a policy without lookup-self: the calls will tell.
            self._adopt({}, token)
        else:
            raise self._error(response, "token lookup")

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
        response = await self._send("POST", f"auth/{quote(mount, safe='/')}/login", body, None)
        if response.status_code == 429 or response.status_code >= 500:
            raise self._error(response, "login")
        auth = _auth(response) if response.status_code == 200 else {}
        if not auth.get("client_token"):
            text = _errors_text(response, (*self._secrets, *body.values()))
            what = "role_id and secret_id" if settings.method == "approle" else "role and JWT"
            raise ProviderRefused(
                f"Vault {settings.method} login at auth/{mount} refused: {text}; check the "
                f"{what} {self._where()}"
            )
        self._adopt(auth)
        self.logins += 1
        log.info("vault login", extra={"method": settings.method, "mount": mount, "ttl": self._ttl})

    def _retry_renewal_soon(self) -> None:
        """Renewal failed for now: keep the token we have and try again shortly."""
        remaining = self._expires_at - time.monotonic()
        if remaining <= 0:
            raise ProviderTransient(f"the Vault token expired and renewal failed {self._where()}")
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
                response = await self._send("POST", "auth/token/renew-self", {}, self._token)
            except ProviderTransient:
                self._retry_renewal_soon()
                return
            if response.status_code == 429 or response.status_code >= 500:
                self._retry_renewal_soon()
                return
            auth = _auth(response) if response.status_code == 200 else {}
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

    async def _recover(self, refused: str) -> str:
        """After a 403: "retry" with a new token, or why not ("policy" or "token")."""
        async with self._token_lock:
            if self._token != refused:
                return "retry"  # replaced meanwhile
            check = await self._send("GET", "auth/token/lookup-self", None, refused)
            if check.status_code == 200:
                return "policy"  # the token is fine: its policy is what refuses
            if check.status_code not in (401, 403):
                raise self._error(check, "token lookup")
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

    # -- Transit -----------------------------------------------------------------------

    async def read_key(self) -> dict[str, Any]:
        return await self._request("read", "GET")

    async def refresh(self) -> None:
        """Re-read the key's latest version; a Transit rotation changes our key_id."""
        meta = await self.read_key()
        self.key_type = str(meta.get("type") or "")
        self._saw_version(meta.get("latest_version"))
        note_call(key_version=str(self.key_version))

    async def wrap(self, plaintext: bytes) -> bytes:
        data = await self._request(
            "encrypt", "POST", {"plaintext": base64.b64encode(plaintext).decode()}
        )
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str) or not _TRANSIT_TEXT.fullmatch(ciphertext.encode()):
            raise ProviderTransient(f"Transit encrypt returned no ciphertext {self._where()}")
        version = data.get("key_version", _ciphertext_version(ciphertext.encode()))
        note_call(key_version=str(version))
        self._saw_version(version)  # encrypt uses the latest version: it may have moved
        return ciphertext.encode("ascii")

    async def unwrap(self, wrapped: bytes) -> bytes:
        version = _ciphertext_version(wrapped)
        if version is None:
            raise InvalidCiphertext("invalid ciphertext")
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
        expiry = "no expiry" if not self._ttl else f"ttl {round(self._ttl)}s"
        renew = ", renewable" if self._renewable else ""
        login = f" at auth/{self.settings.login_mount}" if self.settings.method != "token" else ""
        return [
            f"key {self.settings.transit}/{self.settings.key} version {self.key_version} "
            f"({key_type}) on {self._server} is usable",
            f"auth {self.settings.method}{login}: token {expiry}{renew}",
        ]

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        await self._http.aclose()


def _data(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        raise ProviderTransient(f"Vault answered HTTP {response.status_code}, not JSON") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    return data if isinstance(data, dict) else {}


def _auth(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    auth = payload.get("auth") if isinstance(payload, dict) else None
    return auth if isinstance(auth, dict) else {}


def _loopback(address: str) -> bool:
    try:
        host = httpx.URL(address).host
    except httpx.InvalidURL:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def _env(env: Mapping[str, str], *names: str, default: str = "") -> str:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return default


def vault_settings_from_env(env: Mapping[str, str]) -> VaultSettings:
    """Settings from the environment (names in the module docstring)."""
    address = _env(env, "KMSPLUG_VAULT_ADDR", "VAULT_ADDR")
    if not address:
        raise ConfigError("vault: set --vault-address (VAULT_ADDR) to the server URL")
    key = _env(env, "KMSPLUG_VAULT_TRANSIT_KEY")
    if not key:
        raise ConfigError("vault: set --vault-transit-key to the Transit key name")
    timeout_text = _env(env, "KMSPLUG_VAULT_TIMEOUT", default="2")
    try:
        timeout = float(timeout_text)
    except ValueError:
        raise ConfigError("vault: KMSPLUG_VAULT_TIMEOUT must be a number of seconds") from None
    legacy = _env(env, "KMSPLUG_VAULT_LEGACY_KEY_IDS")
    return VaultSettings(
        address=address,
        key=key,
        mount=_env(env, "KMSPLUG_VAULT_TRANSIT_MOUNT", default="transit"),
        namespace=_env(env, "KMSPLUG_VAULT_NAMESPACE", "VAULT_NAMESPACE"),
        auth=_env(env, "KMSPLUG_VAULT_AUTH").lower(),
        auth_mount=_env(env, "KMSPLUG_VAULT_AUTH_MOUNT"),
        token=_env(env, "KMSPLUG_VAULT_TOKEN", "VAULT_TOKEN"),
        token_file=_env(env, "KMSPLUG_VAULT_TOKEN_FILE"),
        role_id=_env(env, "KMSPLUG_VAULT_ROLE_ID"),
        secret_id=_env(env, "KMSPLUG_VAULT_SECRET_ID"),
        secret_id_file=_env(env, "KMSPLUG_VAULT_SECRET_ID_FILE"),
        role=_env(env, "KMSPLUG_VAULT_ROLE"),
        jwt_file=_env(env, "KMSPLUG_VAULT_JWT_FILE", default=SA_TOKEN_FILE),
        ca_cert=_env(env, "KMSPLUG_VAULT_CACERT", "VAULT_CACERT"),
        timeout=timeout,
        legacy_key_ids=tuple(item.strip() for item in legacy.split(",") if item.strip()),
    )


def vault_provider(
    settings: VaultSettings,
    env: Mapping[str, str],
    resilience: ResiliencePolicy | None = None,
) -> RemoteKek:
    """The Vault Transit provider behind the resilience layer.

    Credentials the settings lack (no token, token file, AppRole or role) come from
    `env`: KMSPLUG_VAULT_TOKEN / VAULT_TOKEN, or KMSPLUG_VAULT_TOKEN_FILE; an AppRole
    without a secret_id takes KMSPLUG_VAULT_SECRET_ID(_FILE).
    """
    if settings.method == "token" and not (settings.token or settings.token_file):
        settings = replace(
            settings,
            token=_env(env, "KMSPLUG_VAULT_TOKEN", "VAULT_TOKEN"),
            token_file=_env(env, "KMSPLUG_VAULT_TOKEN_FILE"),
        )
    if settings.method == "approle" and not (settings.secret_id or settings.secret_id_file):
        settings = replace(
            settings,
            secret_id=_env(env, "KMSPLUG_VAULT_SECRET_ID"),
            secret_id_file=_env(env, "KMSPLUG_VAULT_SECRET_ID_FILE"),
        )
    kek = VaultKek(settings)
    login = f" at auth/{settings.login_mount}" if settings.method != "token" else ""
    source = " (file)" if settings.method == "token" and settings.token_file else ""
    log.info("vault auth: %s%s%s on %s", settings.method, login, source, _server(settings.address))
    return Resilient(kek, resilience)
