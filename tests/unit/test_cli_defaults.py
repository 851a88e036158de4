"""`kmsplug serve`'s defaults are the settings objects' own: a flag that left them would
start the plugin differently from the library's defaults."""

from __future__ import annotations

import dataclasses
import os

import pytest

from kmsplug.cli.options import DEFAULT_SOCKET
from kmsplug.cli.serve import rotation_policy, serve, server_settings
from kmsplug.core import RotationPolicy
from kmsplug.endpoint import Endpoint
from kmsplug.server import ServerSettings
from kmsplug.service import PROBE_INTERVAL


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    for name in list(os.environ):
        if name.startswith("KMSPLUG_"):
            monkeypatch.delenv(name)
    with serve.make_context("kmsplug serve", []) as ctx:
        return dict(ctx.params)


def test_rotation_defaults_come_from_the_core(defaults: dict[str, object]) -> None:
    assert rotation_policy(defaults) == RotationPolicy()
    assert RotationPolicy().max_seals == 1 << 24  # the core's, as documented


def test_server_defaults_come_from_server_settings(defaults: dict[str, object]) -> None:
    assert server_settings(defaults) == ServerSettings(endpoint=Endpoint.parse(DEFAULT_SOCKET))
    named = {field.name for field in dataclasses.fields(ServerSettings)}
    assert named <= set(defaults), "every ServerSettings field has its option"
    assert defaults["health_probe_interval"] == PROBE_INTERVAL
