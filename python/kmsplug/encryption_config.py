"""EncryptionConfiguration documents for kube-apiserver that point at a kmsplug socket."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError

API_VERSIONS = ("v2", "v1", "both")


def encryption_configuration(
    endpoint: Endpoint,
    *,
    api: str = "v2",
    name: str = "kmsplug",
    timeout: str = "3s",
    resources: Sequence[str] = ("secrets",),
    cachesize: int | None = None,
    identity_fallback: bool = True,
) -> dict[str, Any]:
    """Build the document; `api="both"` lists a v2 provider then a v1 one on one socket.

    The identity fallback keeps data written before encryption was enabled readable
    until it is migrated; drop it once `kmsplug verify` finds nothing in plaintext.
    """
    if api not in API_VERSIONS:
        raise ConfigError(f"api must be one of {', '.join(API_VERSIONS)}")
    if not name or ":" in name:
        raise ConfigError("provider name must be non-empty and contain no ':'")
    if cachesize is not None and api == "v2":
        raise ConfigError("cachesize applies to KMS v1 providers only")
    providers: list[dict[str, Any]] = []
    if api in ("v2", "both"):
        providers.append(
            {
                "kms": {
                    "apiVersion": "v2",
                    "name": name,
                    "endpoint": endpoint.url,
                    "timeout": timeout,
                }
            }
        )
    if api in ("v1", "both"):
        v1: dict[str, Any] = {
            "apiVersion": "v1",
            "name": f"{name}-v1" if api == "both" else name,
            "endpoint": endpoint.url,
            "timeout": timeout,
        }
        if cachesize is not None:
            v1["cachesize"] = cachesize
        providers.append({"kms": v1})
    if identity_fallback:
        providers.append({"identity": {}})
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": list(resources), "providers": providers}],
    }


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False)
