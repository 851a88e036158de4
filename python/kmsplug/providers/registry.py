"""Every provider by name, and the one place remote ones are assembled.

A remote provider is a package of two modules: `settings` (a `settings_from_env(env)`
that reads its KMSPLUG_* variables, importing no SDK) and a factory module with
`build(settings, env)`. `build` below checks the provider's pip extra, builds it, and
puts it behind the resilience layer, once. The local key file is no remote provider: the
service builds it from --key-file.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from kmsplug.errors import ConfigError
from kmsplug.extras import require
from kmsplug.providers.base import KekProvider
from kmsplug.providers.resilient import ResiliencePolicy, Resilient

LOCAL = "local"


@dataclass(frozen=True, slots=True)
class RemoteProvider:
    """Where a remote provider's settings and factory live (imported only when chosen:
    its SDK is a pip extra of the same name)."""

    settings: str
    factory: str


#: `--provider` and `--decrypt-provider` choices, in the order --help lists them.
REMOTE: dict[str, RemoteProvider] = {
    "alibaba": RemoteProvider(
        "kmsplug.providers.alibaba.settings", "kmsplug.providers.alibaba.kek"
    ),
    "vault": RemoteProvider("kmsplug.providers.vault.settings", "kmsplug.providers.vault.transit"),
    "pkcs11": RemoteProvider(
        "kmsplug.providers.pkcs11.settings", "kmsplug.providers.pkcs11.provider"
    ),
    "aws": RemoteProvider("kmsplug.providers.aws.settings", "kmsplug.providers.aws.kek"),
}
NAMES = (LOCAL, *REMOTE)


class _Settings(Protocol):
    def settings_from_env(self, env: Mapping[str, str]) -> Any: ...


class _Factory(Protocol):
    def build(self, settings: Any, env: Mapping[str, str]) -> KekProvider: ...


def require_extras(names: Sequence[str]) -> None:
    """MissingExtra, naming the pip command, unless every named provider's SDK is there."""
    for name in names:
        if name != LOCAL:
            require(name, f"the {name} provider")


def build(
    name: str, env: Mapping[str, str], resilience: ResiliencePolicy | None = None
) -> KekProvider | None:
    """The remote provider `name`, its settings read from `env`, behind the resilience
    layer with `resilience`'s limits; None for the local key file."""
    if name == LOCAL:
        return None
    where = REMOTE.get(name)
    if where is None:
        raise ConfigError(f"unknown provider {name!r}; one of {', '.join(NAMES)}")
    require_extras([name])
    settings = cast(_Settings, importlib.import_module(where.settings)).settings_from_env(env)
    factory = cast(_Factory, importlib.import_module(where.factory))
    return Resilient(factory.build(settings, env), resilience)
