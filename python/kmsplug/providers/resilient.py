"""One resilience layer around every remote provider (the registry puts each behind it
once), so none re-implements it.

- a deadline below the apiserver's 3 s per call, across all retries: a slow KMS yields a
  clean UNAVAILABLE instead of a pile-up;
- retries with full jitter on throttling and transient errors, never on a refusal;
- a token bucket that keeps the plugin under the account's KMS quota;
- single-flight: concurrent unwraps of the same blob cost one remote call;
- an audit record per remote call (operation, provider, key, request id, latency,
  outcome; never plaintext or ciphertext) on the `kmsplug.audit` logger.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from kmsplug.errors import (
    KmsplugError,
    ProviderRefused,
    ProviderThrottled,
    ProviderTransient,
    ProviderUnavailable,
)
from kmsplug.providers.base import KekProvider, Secret
from kmsplug.providers.shared import CallInfo, current_call

audit_log = logging.getLogger("kmsplug.audit")

#: Upper bounds (seconds) of the remote-call latency histogram: 1 ms .. 5 s.
REMOTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ResiliencePolicy:
    deadline: float = 2.5
    """Seconds for one operation, all retries included (the apiserver waits 3 s)."""
    max_attempts: int = 4
    backoff_base: float = 0.05
    backoff_max: float = 1.0
    rate: float = 500.0
    """Remote calls per second this plugin allows itself (the account quota is ~750-1,000)."""
    burst: int = 50


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.updated = time.monotonic()

    async def acquire(self) -> None:
        """Take a token, waiting for one if needed (the caller's deadline bounds the wait)."""
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await anyio.sleep((1 - self.tokens) / self.rate)


@dataclass
class CallStats:
    """Counters the metrics endpoint reads."""

    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    """(operation, outcome) -> count."""
    retries: int = 0
    throttled: int = 0
    shared_unwraps: int = 0
    latency: dict[str, list[float]] = field(default_factory=dict)
    """operation -> [count per bucket of LATENCY_BUCKETS (+Inf last)..., sum of seconds]."""

    def count(self, operation: str, outcome: str) -> None:
        key = (operation, outcome)
        self.calls[key] = self.calls.get(key, 0) + 1

    def time(self, operation: str, seconds: float) -> None:
        row = self.latency.setdefault(operation, [0.0] * (len(REMOTE_BUCKETS) + 2))
        row[bisect.bisect_left(REMOTE_BUCKETS, seconds)] += 1
        row[-1] += seconds


class Resilient(KekProvider):
    """Wraps a provider with deadline, retries, rate limit, single-flight and audit."""

    def __init__(self, inner: KekProvider, policy: ResiliencePolicy | None = None) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.policy = policy or ResiliencePolicy()
        self.bucket = TokenBucket(self.policy.rate, float(self.policy.burst))
        self.stats = CallStats()
        # (key_id bound, or None; wrapped) -> the unwrap in flight
        self._unwraps: dict[tuple[str | None, bytes], asyncio.Future[bytes]] = {}

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    def owns(self, key_id: str) -> bool:
        return self.inner.owns(key_id)

    async def wrap(self, plaintext: Secret) -> bytes:
        return await self._call("wrap", lambda: self.inner.wrap(plaintext))

    async def unwrap(self, wrapped: bytes) -> bytes:
        return await self._shared((None, wrapped), lambda: self.inner.unwrap(wrapped))

    async def wrap_bound(self, plaintext: Secret, key_id: str) -> bytes:
        return await self._call("wrap", lambda: self.inner.wrap_bound(plaintext, key_id))

    async def unwrap_bound(self, wrapped: bytes, key_id: str) -> bytes:
        # The key_id is part of what is unwrapped: another one is another answer.
        return await self._shared(
            (key_id, wrapped), lambda: self.inner.unwrap_bound(wrapped, key_id)
        )

    async def _shared(
        self, key: tuple[str | None, bytes], unwrap: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        shared = self._unwraps.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._call("unwrap", unwrap))
            self._unwraps[key] = shared
            shared.add_done_callback(lambda _: self._unwraps.pop(key, None))
        else:  # someone is unwrapping this very blob: share the answer
            self.stats.shared_unwraps += 1
        # shield: one caller giving up (its deadline) does not cancel the others' call.
        return await asyncio.shield(shared)

    async def health(self) -> None:
        await self._call("health", self.inner.health)

    async def preflight(self) -> list[str]:
        return await self.inner.preflight()

    async def refresh(self) -> None:
        await self._call("refresh", self.inner.refresh)

    async def reload_credentials(self) -> None:
        await self.inner.reload_credentials()

    def claims_legacy(self, ciphertext: bytes) -> bool:
        return self.inner.claims_legacy(ciphertext)

    def credential_seconds_left(self) -> float | None:
        return self.inner.credential_seconds_left()

    def legacy_ignores_key_id(self) -> bool:
        return self.inner.legacy_ignores_key_id()

    def binds_key_id(self) -> bool:
        return self.inner.binds_key_id()

    def writes_peer_format(self) -> bool:
        return self.inner.writes_peer_format()

    async def unwrap_legacy(self, ciphertext: bytes) -> bytes:
        return await self._call("unwrap", lambda: self.inner.unwrap_legacy(ciphertext))

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _call(self, operation: str, attempt: Callable[[], Awaitable[T]]) -> T:
        policy = self.policy
        started = time.monotonic()
        deadline = started + policy.deadline
        last: BaseException | None = None
        for number in range(1, policy.max_attempts + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            info = CallInfo()
            token = current_call.set(info)
            call_start = time.monotonic()
            outcome = "ok"
            try:
                with anyio.fail_after(remaining):
                    await self.bucket.acquire()
                    return await attempt()
            except TimeoutError:
                outcome = "timeout"
                last = ProviderTransient(f"{self.kind} KMS did not answer in time")
            except ProviderThrottled as exc:
                outcome, last = "throttled", exc
                self.stats.throttled += 1
            except ProviderTransient as exc:
                outcome, last = "transient", exc
            except ProviderRefused:
                outcome = "refused"
                raise
            except KmsplugError:
                outcome = "error"
                raise
            finally:
                current_call.reset(token)
                self.stats.count(operation, outcome)
                self.stats.time(operation, time.monotonic() - call_start)
                self._audit(operation, outcome, number, info, time.monotonic() - call_start)
            if number == policy.max_attempts:
                break
            self.stats.retries += 1
            # Full jitter: a herd of plugins restarted together does not retry in step.
            ceiling = min(policy.backoff_max, policy.backoff_base * (2 ** (number - 1)))
            pause = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
            if time.monotonic() + pause >= deadline:
                break
            await anyio.sleep(pause)
        raise ProviderUnavailable(
            f"{self.kind} KMS unavailable: {type(last).__name__ if last else 'deadline'}"
        ) from last

    def _audit(
        self, operation: str, outcome: str, attempt: int, info: CallInfo, seconds: float
    ) -> None:
        audit_log.info(
            "remote KMS call",
            extra={
                "operation": operation,
                "provider": self.kind,
                "key_id": self.inner.key_id,
                "key_version": info.key_version,
                "request_id": info.request_id,
                "attempt": attempt,
                "outcome": outcome,
                "latency_ms": round(seconds * 1000, 3),
            },
        )
