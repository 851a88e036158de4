from __future__ import annotations

import pytest

from kmsplug.encryption_config import encryption_configuration
from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError

ENDPOINT = Endpoint("/var/run/kmsplugin/socket.sock")


def test_v2_default() -> None:
    doc = encryption_configuration(ENDPOINT)
    providers = doc["resources"][0]["providers"]
    assert providers[0]["kms"]["apiVersion"] == "v2"
    assert "cachesize" not in providers[0]["kms"]
    assert providers[1] == {"identity": {}}


def test_both_gives_unique_names() -> None:
    doc = encryption_configuration(ENDPOINT, api="both", identity_fallback=False)
    names = [p["kms"]["name"] for p in doc["resources"][0]["providers"]]
    assert len(set(names)) == 2


@pytest.mark.parametrize("kwargs", [{"api": "v3"}, {"name": ""}, {"name": "a:b"}, {"cachesize": 5}])
def test_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        encryption_configuration(ENDPOINT, **kwargs)  # type: ignore[arg-type]
