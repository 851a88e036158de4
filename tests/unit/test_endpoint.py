from __future__ import annotations

import pytest

from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "path", "abstract", "target"),
    [
        ("unix:///var/run/kms.sock", "/var/run/kms.sock", False, "unix:/var/run/kms.sock"),
        ("/tmp/x.sock", "/tmp/x.sock", False, "unix:/tmp/x.sock"),
        ("unix:///@kms", "kms", True, "unix-abstract:kms"),
    ],
)
def test_parse(value: str, path: str, abstract: bool, target: str) -> None:
    endpoint = Endpoint.parse(value)
    assert (endpoint.path, endpoint.abstract, endpoint.grpc_target) == (path, abstract, target)
    assert Endpoint.parse(endpoint.url) == endpoint


@pytest.mark.parametrize(
    "value", ["tcp://127.0.0.1:80", "unix://relative.sock", "unix:///@", "unix:///", "", "x"]
)
def test_parse_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        Endpoint.parse(value)
