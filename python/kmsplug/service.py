"""The KMS service on plain Python types: what both API versions ask of the plugin.

Nothing here knows protobuf or gRPC; the servicers translate. Status answers from state
kept by a background prober, so the apiserver's constant polling costs no remote call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio

from kmsplug.core import RotationPolicy
from kmsplug.errors import KeyRevoked, ProviderUnavailable
from kmsplug.sealer import Sealer

log = logging.getLogger(__name__)
audit = logging.getLogger("kmsplug.audit")

HEALTHY = "ok"
#: Seconds between background checks of the write KEK (`serve --health-probe-interval`).
PROBE_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class EncryptResult:
    ciphertext: bytes
    key_id: str
    annotations: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusResult:
    healthz: str
    """"ok" when healthy; otherwise a short reason, safe to show (no secrets)."""
    key_id: str

    @property
    def healthy(self) -> bool:
        return self.healthz == HEALTHY


@dataclass(slots=True)
class HealthState:
    """The last verdict of the background prober."""

    healthz: str = "starting"
    checked_at: float = 0.0
    consecutive_failures: int = 0
    revoked: str = ""
    """Why the KMS refuses the write key ('' unless it said disabled or pending deletion)."""


class KeyService:
    """encrypt / decrypt / status for any API version, on top of a Sealer."""

    def __init__(
        self,
        sealer: Sealer,
        *,
        probe_interval: float = PROBE_INTERVAL,
        probe_timeout: float = 2.5,
        maintenance_interval: float = 5.0,
        refresh_interval: float = 300.0,
    ) -> None:
        self.sealer = sealer
        self.health = HealthState()
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._maintenance_interval = maintenance_interval
        self._refresh_interval = refresh_interval

    async def encrypt(self, plaintext: bytes) -> EncryptResult:
        if self.health.revoked:  # no new data may come to depend on a revoked key
            raise KeyRevoked(self.health.revoked)
        ciphertext, key_id = await self.sealer.seal(plaintext)
        return EncryptResult(ciphertext, key_id)

    async def decrypt(
        self,
        ciphertext: bytes,
        key_id: str | None = None,
        annotations: Mapping[str, bytes] | None = None,
    ) -> bytes:
        del annotations  # kmsplug ciphertexts describe themselves
        return await self.sealer.open(ciphertext, key_id)

    def status(self) -> StatusResult:
        return StatusResult(self.health.healthz, self.sealer.key_id)

    def apiserver_status(self) -> StatusResult:
        """What the apiserver's Status poll gets: the status, or KeyRevoked while the KMS
        refuses the write key. A failing Status is the only way to stop KMS v2 writes: the
        apiserver keeps sealing with its cached seed while Status names the same key_id,
        and stops once its last good Status is 3 minutes old."""
        if self.health.revoked:
            raise KeyRevoked(self.health.revoked)
        return self.status()

    async def start(self) -> None:
        """Check the key, make the first local KEK and the first health verdict."""
        try:
            for line in await self.sealer.writer.preflight():
                log.info("preflight: %s", line)
                audit.info("preflight passed", extra={"event": "preflight", "detail": line})
            await self.sealer.start()
        except ProviderUnavailable as exc:  # say why a restart during an outage cannot work
            raise ProviderUnavailable(
                f"cannot start while the KMS is unavailable: {exc}. kmsplug keeps no key on "
                "disk, so it needs the KMS to check the key and make its local KEK; it starts "
                "once the KMS answers"
            ) from exc
        self._audit_key("new local KEK", "rotation")
        await self.probe()

    async def probe(self) -> None:
        """Check the write provider once and record the verdict."""
        state = self.health
        try:
            with anyio.fail_after(self._probe_timeout):
                await self.sealer.writer.health()
        except Exception as exc:  # any failure makes the verdict unhealthy
            state.consecutive_failures += 1
            kind = self.sealer.writer.kind
            state.healthz = f"{kind} KEK unavailable: {type(exc).__name__}"
            log.warning("health probe failed", extra={"error": type(exc).__name__})
            if isinstance(exc, KeyRevoked):
                state.healthz = f"{kind} key disabled or pending deletion: writes refused"
                self._mark_revoked(str(exc))
        else:
            state.consecutive_failures = 0
            state.healthz = HEALTHY
            self._mark_revoked("")
        state.checked_at = time.monotonic()

    def _mark_revoked(self, reason: str) -> None:
        """Record the KMS's verdict on the write key (a reason, or '' once it is usable)."""
        if bool(reason) != bool(self.health.revoked):
            message = "write key revoked: sealing stopped" if reason else "write key usable again"
            log.warning(message)
            audit.info(message, extra={"event": "revoked" if reason else "restored",
                                       "key_id": self.sealer.key_id})  # fmt: skip
        self.health.revoked = reason

    async def run_background(self) -> None:
        """Probe health and rotate local KEKs on schedule, until cancelled."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._probe_forever)
            tasks.start_soon(self._maintain_forever)

    async def _probe_forever(self) -> None:
        while True:
            await anyio.sleep(self._probe_interval)
            await self.probe()

    async def _maintain_forever(self) -> None:
        last_refresh = anyio.current_time()
        while True:
            await anyio.sleep(self._maintenance_interval)
            if anyio.current_time() - last_refresh >= self._refresh_interval:
                last_refresh = anyio.current_time()
                try:
                    await self.sealer.writer.refresh()
                except Exception as exc:  # the next refresh tries again
                    log.warning("key refresh failed", extra={"error": type(exc).__name__})
            if self.sealer.needs_rotation():
                before = self.sealer.key_id
                try:
                    await self.sealer.rotate()
                except Exception as exc:  # retried on the next tick; seals go on meanwhile
                    log.warning("local KEK rotation failed", extra={"error": type(exc).__name__})
                else:
                    self._audit_key("new local KEK", "rotation")
                    if self.sealer.key_id != before:
                        self._audit_key("key_id changed", "new-key-id", previous=before)

    async def reload(self, policy: RotationPolicy | None = None) -> None:
        """Apply new rotation settings, re-read the write key's state, rotate if it moved,
        and probe health; no call drops. A bad setting keeps the old ones."""
        before = self.sealer.key_id
        if policy is not None:
            try:
                self.sealer.set_policy(policy)
            except ValueError as exc:
                log.warning("reload: rotation settings refused", extra={"error": str(exc)})
            else:
                log.info("reload: rotation settings applied")
        try:
            for provider in self.sealer.providers:
                await provider.reload_credentials()
            await self.sealer.writer.refresh()
            if self.sealer.needs_rotation():
                await self.sealer.rotate()
        except Exception as exc:  # the old state keeps serving
            log.warning("reload failed", extra={"error": type(exc).__name__})
            return
        await self.probe()
        self._audit_key("reloaded", "reload", previous=before)

    def _audit_key(self, message: str, event: str, **extra: str) -> None:
        audit.info(
            message,
            extra={
                "event": event,
                "key_id": self.sealer.key_id,
                "rotations": self.sealer.stats().rotations,
                **extra,
            },
        )
