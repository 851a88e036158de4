"""Fixtures for the conformance suite's tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_helpers import REFERENCE, ReferencePlugin, StartReference

from kmsplug.endpoint import Endpoint


@pytest.fixture
def reference_plugin(short_tmp: Path) -> Iterator[StartReference]:
    """Start the test-only plugin with some faults; every one is stopped (by PID) after."""
    started: list[ReferencePlugin] = []

    def start(*faults: str) -> ReferencePlugin:
        socket = short_tmp / f"ref-{len(started)}.sock"
        args = [arg for fault in faults for arg in ("--fault", fault)]
        process = subprocess.Popen(
            [sys.executable, str(REFERENCE), "--socket", str(socket), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        plugin = ReferencePlugin(Endpoint(path=str(socket)), process)
        started.append(plugin)
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until it listens or dies
        assert line.strip() == "ready", f"reference plugin did not start: {line}"
        return plugin

    yield start
    for plugin in started:
        plugin.stop()
