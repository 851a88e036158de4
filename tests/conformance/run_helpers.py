"""Helpers for the conformance suite's tests: run the real command, start the test plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmsplug.endpoint import Endpoint

HERE = Path(__file__).parent
REFERENCE = HERE / "reference_plugin.py"


@dataclass
class Run:
    """One `kmsplug conformance --json` run: exit code, report and time taken."""

    code: int
    report: dict[str, Any]
    seconds: float
    stderr: str

    def outcome(self, check: str) -> str:
        return str(self.check(check)["outcome"])

    def check(self, check: str) -> dict[str, Any]:
        for entry in self.report["checks"]:
            if entry["id"] == check:
                return dict(entry)
        raise KeyError(check)

    def failing(self) -> set[str]:
        return {c["id"] for c in self.report["checks"] if c["outcome"] in ("fail", "not run")}

    def ids(self) -> set[str]:
        return {c["id"] for c in self.report["checks"]}


def conformance(endpoint: Endpoint, *args: str, timeout: float = 180.0) -> Run:
    """Run the real command in its own process, as a user would."""
    command = [sys.executable, "-m", "kmsplug", "conformance", "--socket", endpoint.url, "--json"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.monotonic() - started
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report (exit {done.returncode}):\n{done.stderr}") from None
    return Run(done.returncode, report, seconds, done.stderr)


@dataclass
class ReferencePlugin:
    endpoint: Endpoint
    process: subprocess.Popen[str]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


StartReference = Callable[..., ReferencePlugin]
