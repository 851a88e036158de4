"""Run a real `kmsplug serve` process on a temporary socket, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kmsplug.endpoint import Endpoint
from kmsplug.sockets import is_live


@dataclass
class PluginProcess:
    """One `kmsplug serve` child process; `stop()` ends it by its PID only."""

    endpoint: Endpoint
    key_file: Path
    args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    env: dict[str, str] | None = None  # extra environment (provider settings)
    program: list[str] = field(default_factory=lambda: [sys.executable, "-m", "kmsplug"])
    """The `kmsplug` command to run (another install's console script, say)."""
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0
    """Where this start's output begins in the log (a restart appends to the same file)."""

    def start(self, timeout: float = 60.0) -> PluginProcess:
        """Start and wait until it serves. A start takes about a second; on a loaded 2-core
        machine the imports and the provider's start-up checks took more than 20 s."""
        command = [
            *self.program,
            "serve",
            "--socket",
            self.endpoint.url,
            "--key-file",
            str(self.key_file),
            "--http-address",
            "127.0.0.1:0",  # many test processes at once: each picks a free port
            *self.args,
        ]
        log_path = self.log_path or self.key_file.with_suffix(".log")
        self.log_path = log_path
        self.log_offset = log_path.stat().st_size if log_path.exists() else 0
        log = log_path.open("ab")
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"kmsplug exited with {self.proc.returncode}:\n{self.current_log()}"
                )
            if is_live(self.endpoint) and "serving on" in self.current_log():
                return self
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"kmsplug did not become ready:\n{self.current_log()}")

    @property
    def http_url(self) -> str:
        """Where /metrics and the health endpoints answer (read from this start's log)."""
        for line in self.current_log().splitlines():
            if "metrics and health" in line and "url=" in line:
                return line.split("url=", 1)[1].split()[0].removesuffix("/metrics")
        raise LookupError("the plugin logged no HTTP endpoint")

    def current_log(self) -> str:
        """The log of the latest start only."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


PluginFactory = Callable[..., PluginProcess]
"""The `plugin_factory` fixture: start(*serve_args, key_file=, endpoint=, name=)."""
