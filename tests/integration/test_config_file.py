"""`serve --config FILE`: the same settings as the flags; flags and environment win."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

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


@pytest.mark.anyio
async def test_sighup_rereads_rotation_settings_without_dropping_calls(
    plugin_factory: PluginFactory, short_tmp: Path
) -> None:
    import signal
    import urllib.request

    settings = short_tmp / "kmsplug.yaml"
    settings.write_text("kek-rotate-after-seals: 1000000\n")
    plugin = plugin_factory("--config", str(settings))

    def rotations() -> float:
        with urllib.request.urlopen(plugin.http_url + "/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        return float(
            next(
                line.split()[-1]
                for line in text.splitlines()
                if line.startswith("kmsplug_local_kek_rotations_total ")
            )
        )

    async with KmsClient(plugin.endpoint) as client:
        for _ in range(300):
            await client.v1_encrypt(b"k" * 32)
        assert rotations() == 1  # the first KEK only
        settings.write_text("kek-rotate-after-seals: 50\nkek-max-seals: 100\n")
        plugin.signal(signal.SIGHUP)
        with anyio.fail_after(10):
            while "rotation settings applied" not in plugin.log():  # noqa: ASYNC110
                await anyio.sleep(0.05)
        for _ in range(600):
            await client.v1_encrypt(b"k" * 32)  # never fails: rotation keeps up
        assert rotations() >= 4
        settings.write_text("kek-max-seals: 0\n")  # invalid: the settings in force stay
        plugin.signal(signal.SIGHUP)
        with anyio.fail_after(10):
            while "settings unreadable" not in plugin.log():  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert (await client.v2_status()).healthz == "ok"
