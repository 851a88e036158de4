"""HTTP to Vault: one pooled httpx client, the headers every call carries, and Vault's
answers turned into errors an operator can act on (with no secret of ours in them).

httpx rather than hvac: hvac is synchronous (requests), so it would need worker threads
as the Alibaba SDK does, and it is untyped; the few Transit and auth endpoints used here
are plain JSON, and httpx gives pooled keep-alive connections on the event loop, timeouts
and TLS with a CA bundle.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from kmsplug.errors import (
    ConfigError,
    InvalidCiphertext,
    KmsplugError,
    ProviderRefused,
    ProviderThrottled,
    ProviderTransient,
)
from kmsplug.providers.shared import note_call
from kmsplug.providers.vault.settings import VaultSettings

log = logging.getLogger(__name__)


class VaultConnection:
    """Calls to one Vault server for one Transit key's provider."""

    def __init__(self, settings: VaultSettings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.server = server_of(settings.address)
        if settings.address.startswith("http://") and not _loopback(settings.address):
            log.warning("vault address is plain http: tokens and DEKs cross the network in clear")
        self._http = http or httpx.AsyncClient(
            base_url=settings.address.rstrip("/") + "/v1/",
            verify=_ssl_context(settings),
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=True,  # a standby without request forwarding redirects
            headers={"X-Vault-Request": "true", "User-Agent": "kmsplug"},
        )

    def where(self) -> str:
        """Where a message is about: server, namespace and key, never a credential."""
        settings = self.settings
        ns = f", namespace {settings.namespace}" if settings.namespace else ""
        return f"(Vault {self.server}{ns}, key {settings.transit}/{settings.key})"

    async def send(
        self, method: str, path: str, body: Mapping[str, Any] | None, token: str | None
    ) -> httpx.Response:
        """One HTTP call; a transport failure is ProviderTransient (or Refused: TLS)."""
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
                f"Vault did not answer in time ({type(exc).__name__}) {self.where()}"
            ) from None
        except httpx.TransportError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise ProviderRefused(
                    f"Vault's TLS certificate is not trusted: set --vault-ca-cert to the CA "
                    f"bundle that signed it {self.where()}"
                ) from None
            raise ProviderTransient(
                f"Vault unreachable ({type(exc).__name__}) {self.where()}"
            ) from None
        request_id = ""
        with contextlib.suppress(ValueError):
            payload = response.json()
            if isinstance(payload, dict):
                request_id = str(payload.get("request_id") or "")
        note_call(request_id=request_id)
        return response

    def error(
        self, response: httpx.Response, operation: str, secrets: tuple[str, ...]
    ) -> KmsplugError:
        """Turn a failed answer into an error an operator can act on (not 401/403);
        `secrets` are blanked out of Vault's text."""
        settings = self.settings
        status = response.status_code
        text = errors_text(response, secrets)
        where = self.where()
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
                f"lower it (POST {settings.transit}/keys/{settings.key}/config) or "
                f"re-encrypt the Secrets (kmsplug migrate) before raising it {where}"
            )
        if operation == "decrypt" and ("cipher" in lowered or "decrypt" in lowered):
            return InvalidCiphertext()
        return ProviderRefused(f"Vault refused {operation}: {text} {where}")

    async def aclose(self) -> None:
        await self._http.aclose()


def server_of(address: str) -> str:
    """scheme://host:port of the address, for messages (never any userinfo or path)."""
    try:
        url = httpx.URL(address)
    except (httpx.InvalidURL, TypeError):
        return "?"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def errors_text(response: httpx.Response, secrets: tuple[str, ...]) -> str:
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


def data_of(response: httpx.Response) -> dict[str, Any]:
    """The `data` object of a successful answer ({} when there is none)."""
    try:
        payload = response.json()
    except ValueError:
        raise ProviderTransient(f"Vault answered HTTP {response.status_code}, not JSON") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    return data if isinstance(data, dict) else {}


def auth_of(response: httpx.Response) -> dict[str, Any]:
    """The `auth` object of a login or renewal ({} when there is none)."""
    try:
        payload = response.json()
    except ValueError:
        return {}
    auth = payload.get("auth") if isinstance(payload, dict) else None
    return auth if isinstance(auth, dict) else {}


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


def _loopback(address: str) -> bool:
    try:
        host = httpx.URL(address).host
    except httpx.InvalidURL:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")
