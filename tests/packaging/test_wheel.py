"""The wheel as a new user gets it: built by maturin, installed with no extras into a fresh
venv, it serves and answers `kmsplug health`; a part whose extra is missing says which pip
command installs it, in one line.

Slow (a release build of the extension, and pip installing the core dependencies from
the package index or pip's cache): `-m "not packaging"` skips it; CI runs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from kmsplug.client import KmsClient
from kmsplug.endpoint import Endpoint
from kmsplug.extras import EXTRAS

from plugin_process import PluginProcess

pytestmark = [pytest.mark.packaging, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
#: What the core must not pull in: every extra's modules.
EXTRA_MODULES = sorted({module for modules in EXTRAS.values() for module in modules})


@dataclass(frozen=True)
class Install:
    wheel: Path
    venv: Path
    work: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "kmsplug"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.work,  # not the source tree: nothing may come from python/ there
            check=False,
        )


def quiet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


@pytest.fixture(scope="module")
def install() -> Iterator[Install]:
    work = Path(tempfile.mkdtemp(prefix="kmsplug-wheel-", dir="/tmp"))
    try:
        maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or "maturin"
        subprocess.run(
            [maturin, "build", "--release", "--quiet", "--out", str(work / "dist")],
            cwd=ROOT,
            check=True,
            timeout=1500,
        )
        (wheel,) = (work / "dist").glob("kmsplug-*.whl")
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
            check=True,
            timeout=900,
            env=quiet_env(),
        )
        yield Install(wheel, venv, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_wheel_ships_the_generated_modules_and_the_extension(install: Install) -> None:
    names = set(zipfile.ZipFile(install.wheel).namelist())
    for api in ("v1beta1", "v2"):
        for module in ("api_pb2.py", "api_pb2_grpc.py", "api_pb2.pyi"):
            assert f"kmsplug/_proto/{api}/{module}" in names
    assert "kmsplug/py.typed" in names and "kmsplug/_kmsplug.pyi" in names
    assert any(n.startswith("kmsplug/_kmsplug.") and n.endswith(".so") for n in names)
    assert not [n for n in names if n.startswith("tests/") or "/vectors/" in n]


def test_no_extra_is_installed_with_the_core(install: Install) -> None:
    probe = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
    found = subprocess.run(
        [str(install.venv / "bin" / "python"), "-c", probe, *EXTRA_MODULES],
        capture_output=True,
        text=True,
        check=True,
        cwd=install.work,
    )
    assert found.stdout.split() == []


def test_the_installed_wheel_serves_and_answers_health(install: Install) -> None:
    endpoint = Endpoint(path=str(install.work / "kms.sock"))
    plugin = PluginProcess(
        endpoint=endpoint,
        key_file=install.work / "local.key",
        program=[str(install.venv / "bin" / "kmsplug")],
        log_path=install.work / "serve.log",
    )
    plugin.start(timeout=60)
    try:
        health = install.run("health", "--socket", endpoint.url, "--timeout", "10")
        assert health.returncode == 0, health.stderr
        assert health.stdout.startswith("ok (version v2, key_id local-")

        async def round_trip() -> None:
            async with KmsClient(endpoint, timeout=10) as client:
                dek = secrets.token_bytes(32)
                sealed = await client.v2_encrypt(dek)
                assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
                assert await client.v1_decrypt(await client.v1_encrypt(dek)) == dek

        anyio.run(round_trip)
    finally:
        assert plugin.terminate(timeout=60) == 0, plugin.log()


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("serve", "--provider", "alibaba", "--key-id", "k", "--region", "r"), "alibaba"),
        (("serve", "--provider", "aws", "--aws-key", "alias/k"), "aws"),
        (("serve", "--provider", "vault"), "vault"),
        (("serve", "--provider", "pkcs11"), "pkcs11"),
        (("serve", "--decrypt-provider", "vault"), "vault"),
        (("migrate",), "cluster"),
        (("bench", "--duration", "0.1"), "bench"),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_pip_command(
    install: Install, args: tuple[str, ...], extra: str
) -> None:
    socket = f"unix://{install.work}/extra-{secrets.token_hex(4)}.sock"
    settings = ("--socket", socket, "--key-file", str(install.work / "extra.key"))
    result = install.run(*args, *(settings if args[0] == "serve" else ()))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("kmsplug: ") and line.endswith(f"pip install 'kmsplug[{extra}]'")
    assert "Traceback" not in result.stderr + result.stdout
