"""One conformance run: its settings, its connections and its time budget.

Every call carries the apiserver's deadline (`timeout`). A call starts only if that whole
deadline fits in what is left of the budget, so the run ends in time even against a
plugin that never answers, and no call is cut short (which would read as a hang).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from kmsplug.conformance.rules import APISERVER_TIMEOUT, DEFAULT_BURST
from kmsplug.conformance.wire import Connection, Reply
from kmsplug.endpoint import Endpoint


class OutOfTime(Exception):
    """The budget cannot fit another call."""


@dataclass(frozen=True, slots=True)
class Settings:
    endpoint: Endpoint
    api: str = "v2"  # v2, v1 or both
    timeout: float = APISERVER_TIMEOUT
    budget: float = 45.0
    burst: int = DEFAULT_BURST
    samples: int = 100  # Status calls for the latency figure (fewer if the plugin is slow)
    sample_seconds: float = 5.0  # ...but at most this long, once 10 are in
    round_trips: int = 16

    def as_json(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["endpoint"] = self.endpoint.url
        return fields


class Session:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.deadline = time.monotonic() + settings.budget
        self._connections: list[Connection] = []
        self._reserved = False
        self.main = self.connect()

    def connect(self, authority: str = "localhost") -> Connection:
        connection = Connection(self.settings.endpoint, authority=authority)
        self._connections.append(connection)
        return connection

    def require(self, seconds: float) -> None:
        if not self._reserved and time.monotonic() + seconds > self.deadline:
            raise OutOfTime

    @asynccontextmanager
    async def reserve(self, seconds: float) -> AsyncIterator[None]:
        """Check once that `seconds` fit, then let every call inside start (a burst's calls
        all start together, so one check covers them)."""
        self.require(seconds)
        self._reserved = True
        try:
            yield
        finally:
            self._reserved = False

    async def call(
        self,
        method: str,
        request: bytes,
        *,
        on: Connection | None = None,
        wait_for_ready: bool = False,
    ) -> Reply:
        self.require(self.settings.timeout)
        connection = on or self.main
        return await connection.call(
            method, request, self.settings.timeout, wait_for_ready=wait_for_ready
        )

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()
