"""The Vault provider's settings, from the environment `serve` fills from its flags.

A KMSPLUG_VAULT_* name wins over the Vault one:

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
    KMSPLUG_COMPAT                              vault: write vault-kubernetes-kms's format
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kmsplug.errors import ConfigError
from kmsplug.providers.shared import env_list, env_seconds, env_value

ALLOWED_TYPES_DEFAULT = ("aes256-gcm96", "chacha20-poly1305")
AUTH_METHODS = ("token", "approle", "kubernetes", "jwt")
SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
#: The longest key_id suffix: "v" and a version of up to 10 digits, with room to spare.
_VERSION_ROOM = 12


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
    compat_vault: bool = False
    """Write exactly what vault-kubernetes-kms writes: Transit text, the bare version as
    key_id."""

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

    @property
    def key_id_prefix(self) -> str:
        """What every key_id of this key starts with; the key version follows."""
        return f"vault:{self.transit}/{self.key}:"

    def validate(self) -> None:
        """ConfigError naming the setting that is missing or wrong."""
        if not self.address.startswith(("http://", "https://")):
            raise ConfigError("vault: the address (VAULT_ADDR) must be an http(s):// URL")
        if not self.key or "/" in self.key:
            raise ConfigError("vault: the Transit key name (KMSPLUG_VAULT_TRANSIT_KEY) is required")
        if not self.transit:
            raise ConfigError("vault: the Transit mount (KMSPLUG_VAULT_TRANSIT_MOUNT) is empty")
        method = self.method
        if method not in AUTH_METHODS:
            raise ConfigError(f"vault: auth method must be one of {', '.join(AUTH_METHODS)}")
        if method == "token" and not (self.token or self.token_file):
            raise ConfigError(
                "vault: no credentials (VAULT_TOKEN, a token file, AppRole or a role)"
            )
        if method == "approle" and not self.role_id:
            raise ConfigError("vault: AppRole needs a role_id (KMSPLUG_VAULT_ROLE_ID)")
        if method in ("kubernetes", "jwt") and not self.role:
            raise ConfigError(f"vault: {method} auth needs a role (KMSPLUG_VAULT_ROLE)")
        if self.timeout <= 0:
            raise ConfigError("vault: the timeout must be positive")
        if len(self.key_id_prefix) + _VERSION_ROOM > 255:
            raise ConfigError("vault: mount and key name are too long for a key_id")

    def with_credentials_from(self, env: Mapping[str, str]) -> VaultSettings:
        """These settings, with the credentials they lack taken from `env`: a token
        (KMSPLUG_VAULT_TOKEN / VAULT_TOKEN, or KMSPLUG_VAULT_TOKEN_FILE), or an AppRole
        secret_id (KMSPLUG_VAULT_SECRET_ID(_FILE))."""
        settings = self
        if settings.method == "token" and not (settings.token or settings.token_file):
            settings = replace(
                settings,
                token=env_value(env, "KMSPLUG_VAULT_TOKEN", "VAULT_TOKEN"),
                token_file=env_value(env, "KMSPLUG_VAULT_TOKEN_FILE"),
            )
        if settings.method == "approle" and not (settings.secret_id or settings.secret_id_file):
            settings = replace(
                settings,
                secret_id=env_value(env, "KMSPLUG_VAULT_SECRET_ID"),
                secret_id_file=env_value(env, "KMSPLUG_VAULT_SECRET_ID_FILE"),
            )
        return settings


def settings_from_env(env: Mapping[str, str]) -> VaultSettings:
    """Settings from the environment (names in the module docstring)."""
    address = env_value(env, "KMSPLUG_VAULT_ADDR", "VAULT_ADDR")
    if not address:
        raise ConfigError("vault: set --vault-address (VAULT_ADDR) to the server URL")
    key = env_value(env, "KMSPLUG_VAULT_TRANSIT_KEY")
    if not key:
        raise ConfigError("vault: set --vault-transit-key to the Transit key name")
    return VaultSettings(
        address=address,
        key=key,
        mount=env_value(env, "KMSPLUG_VAULT_TRANSIT_MOUNT", default="transit"),
        namespace=env_value(env, "KMSPLUG_VAULT_NAMESPACE", "VAULT_NAMESPACE"),
        auth=env_value(env, "KMSPLUG_VAULT_AUTH").lower(),
        auth_mount=env_value(env, "KMSPLUG_VAULT_AUTH_MOUNT"),
        token=env_value(env, "KMSPLUG_VAULT_TOKEN", "VAULT_TOKEN"),
        token_file=env_value(env, "KMSPLUG_VAULT_TOKEN_FILE"),
        role_id=env_value(env, "KMSPLUG_VAULT_ROLE_ID"),
        secret_id=env_value(env, "KMSPLUG_VAULT_SECRET_ID"),
        secret_id_file=env_value(env, "KMSPLUG_VAULT_SECRET_ID_FILE"),
        role=env_value(env, "KMSPLUG_VAULT_ROLE"),
        jwt_file=env_value(env, "KMSPLUG_VAULT_JWT_FILE", default=SA_TOKEN_FILE),
        ca_cert=env_value(env, "KMSPLUG_VAULT_CACERT", "VAULT_CACERT"),
        timeout=env_seconds(env, "KMSPLUG_VAULT_TIMEOUT", "vault", 2.0),
        legacy_key_ids=env_list(env, "KMSPLUG_VAULT_LEGACY_KEY_IDS"),
        compat_vault=env_value(env, "KMSPLUG_COMPAT") == "vault",
    )
