"""`serve --config FILE`: the same settings as the flags; flags and environment win."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio

from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint

from plugin_process import PluginFactory

KMSPLUG = [sys.executable, "-m", "kmsplug"]


def check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KMSPLUG, "config", "--check", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )


def test_settings_come_from_the_file_and_flags_win(
    plugin_factory: PluginFactory, short_tmp: Path
) -> None:
    settings = short_tmp / "kmsplug.yaml"
    settings.write_text("v2-status-version: v2beta1\nmode: direct\ngrace_period: 2\n")
    plugin = plugin_factory("--config", str(settings), "--mode", "hierarchy")
    assert "serving on" in plugin.log()

    async def status() -> str:
        async with KmsClient(plugin.endpoint) as client:
            return (await client.v2_status()).version

    assert anyio.run(status) == "v2beta1"  # from the file


def test_socket_from_file(plugin_factory: PluginFactory, short_tmp: Path) -> None:
    sock = short_tmp / "from-file.sock"
    settings = short_tmp / "s.yaml"
    settings.write_text(f"socket: unix://{sock}\n")
    # the fixture passes --socket itself; the file must lose to it
    plugin = plugin_factory("--config", str(settings))
    assert plugin.endpoint != Endpoint(str(sock))
    assert not sock.exists()


def test_check_names_the_bad_setting(short_tmp: Path) -> None:
    good = short_tmp / "good.yaml"
    good.write_text("mode: direct\nhealth-probe-interval: 5\n")
    assert check(good).returncode == 0
    typo = short_tmp / "typo.yaml"
    typo.write_text("key-flie: /x\n")
    result = check(typo)
    assert result.returncode == 2 and "key-flie" in result.stderr
    wrong = short_tmp / "wrong.yaml"
    wrong.write_text("mode: sideways\n")
    result = check(wrong)
    assert result.returncode == 2 and "--mode" in result.stderr
    env = {**os.environ, "KMSPLUG_MODE": "sideways"}
    assert check(good, env).returncode == 2  # the environment wins over the file, and is checked
