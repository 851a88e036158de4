"""Shared fixtures: a real kmsplug process on a temporary socket and a real gRPC client."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kmsplug.endpoint import Endpoint

from plugin_process import PluginFactory, PluginProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # UNIX socket paths must stay under ~107 bytes; pytest's tmp paths can be longer.
    path = Path(tempfile.mkdtemp(prefix="kmsplug-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plugin_factory(short_tmp: Path) -> Iterator[PluginFactory]:
    """Start kmsplug processes; every one still running is stopped at teardown."""
    started: list[PluginProcess] = []

    def start(
        *args: str,
        key_file: Path | None = None,
        endpoint: Endpoint | None = None,
        name: str = "kms",
    ) -> PluginProcess:
        process = PluginProcess(
            endpoint=endpoint or Endpoint(path=str(short_tmp / f"{name}.sock")),
            key_file=key_file or short_tmp / "local.key",
            args=list(args),
            log_path=short_tmp / f"{name}-{len(started)}.log",
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def plugin(plugin_factory: PluginFactory) -> PluginProcess:
    return plugin_factory()
