"""KMS v1beta1 checks (rules in rules.V1)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

from kmsplug.conformance import alter, common
from kmsplug.conformance.apis import V1, Sealed
from kmsplug.conformance.report import Outcome, Report
from kmsplug.conformance.rules import V1_MAX_CIPHER
from kmsplug.conformance.session import Session
from kmsplug.conformance.wire import Connection

Step = tuple[tuple[str, ...], Callable[[], Awaitable[None]]]

PING = b"ping"  # what the apiserver's v1 health probe encrypts
#: Distinct DEKs the burst's reads decrypt (v1 has one DEK per object, so a restart's
#: reads mostly miss on distinct ciphers).
BURST_DEKS = 32


class V1Checks:
    def __init__(self, session: Session, report: Report) -> None:
        self.session = session
        self.report = report
        self.api = V1(session)
        self.trips = common.RoundTrips()

    def steps(self) -> list[Step]:
        return [
            (("v1.version",), self.version),
            (("v1.probe",), self.probe),
            (
                (
                    "v1.cipher",
                    "v1.distinct",
                    "v1.roundtrip",
                    "v1.encrypt.latency",
                    "v1.decrypt.latency",
                    "v1.encrypt.randomized",
                ),
                self.encrypt_decrypt,
            ),
            (
                (
                    "v1.tamper.flipped",
                    "v1.tamper.truncated",
                    "v1.tamper.extended",
                    "v1.tamper.random",
                ),
                self.tamper,
            ),
            (("v1.burst", "v1.burst.second_connection", "v1.burst.throughput"), self.burst),
            (
                (
                    "v1.bad.empty_plaintext",
                    "v1.bad.oversized_plaintext",
                    "v1.bad.empty_ciphertext",
                    "v1.bad.undecodable",
                ),
                self.bad_input,
            ),
            (("v1.authority",), self.authority),
        ]

    async def _version(self, on: Connection | None = None) -> str | None:
        """None if Version answers v1beta1 (the apiserver's check before any call)."""
        version, reply = self.api.read_version(await self.api.alive(on=on, wait=True))
        if version is None:
            return f"Version failed: {reply.describe()}"
        if version.version != V1.VERSION:
            return f"Version answered {version.version!r}"
        return None

    async def version(self) -> None:
        problem = await self._version()
        if problem:
            self.report.add("v1.version", Outcome.FAIL, problem)
        else:
            self.report.add("v1.version", Outcome.PASS, V1.VERSION)

    async def _probe(self, on: Connection | None = None) -> str | None:
        sealed, reply = await self.api.encrypt(PING, on=on)
        if sealed is None:
            return f"Encrypt('ping') failed: {reply.describe()}"
        plain, reply = await self.api.decrypt(sealed, on=on)
        if plain is None:
            return f"Decrypt failed: {reply.describe()}"
        return None if plain == PING else "Decrypt returned a different plaintext"

    async def probe(self) -> None:
        problem = await self._probe()
        if problem:
            self.report.add("v1.probe", Outcome.FAIL, problem)
        else:
            self.report.add("v1.probe", Outcome.PASS, "'ping' round-trips")

    async def encrypt_decrypt(self) -> None:
        trips = self.trips = await common.round_trips(self.api, self.session.settings.round_trips)
        add = self.report.add
        common.report_latency(self.report, "v1.encrypt.latency", trips.encrypts)
        common.report_latency(self.report, "v1.decrypt.latency", trips.decrypts)
        failure = trips.first_encrypt_failure()
        if failure is not None:
            why = f"unproven: Encrypt failed: {failure.describe()}"
            add("v1.cipher", Outcome.FAIL, why)
            add("v1.distinct", Outcome.FAIL, why)
            common.report_round_trips(self.report, "v1.roundtrip", trips)
            add("v1.encrypt.randomized", Outcome.FIGURE, "Encrypt failed")
            return
        ciphers = [s.ciphertext for s in trips.sealed if s is not None]
        sizes = [len(c) for c in ciphers]
        if min(sizes) == 0:
            add("v1.cipher", Outcome.FAIL, "empty cipher")
        elif max(sizes) > V1_MAX_CIPHER:
            add("v1.cipher", Outcome.FAIL, f"{max(sizes)} bytes, over {V1_MAX_CIPHER}")
        else:
            add("v1.cipher", Outcome.PASS, f"{min(sizes)}-{max(sizes)} bytes")
        if len(set(ciphers)) == len(ciphers):
            add("v1.distinct", Outcome.PASS, f"{len(ciphers)} plaintexts, all distinct")
        else:
            add(
                "v1.distinct",
                Outcome.FAIL,
                f"{len(ciphers)} distinct plaintexts gave {len(set(ciphers))} distinct ciphers",
            )
        common.report_round_trips(self.report, "v1.roundtrip", trips)
        await common.report_randomized(self.api, self.report, "v1.encrypt.randomized", trips.good())

    async def tamper(self) -> None:
        good = self.trips.good()
        for kind, make in (
            ("flipped", alter.flipped),
            ("truncated", alter.truncated),
            ("extended", alter.extended),
            ("random", alter.random_like),
        ):

            def variants(
                s: Sealed, make: Callable[[bytes], list[alter.Variant]] = make
            ) -> list[tuple[str, Sealed]]:
                return [(name, s.but(ciphertext=c)) for name, c in make(s.ciphertext)]

            await common.tamper(self.api, self.report, f"v1.tamper.{kind}", good, variants)

    async def bad_input(self) -> None:
        await common.bad_plaintext(self.api, self.report, "v1.bad.empty_plaintext", b"")
        await common.bad_plaintext(
            self.api, self.report, "v1.bad.oversized_plaintext", bytes(common.OVERSIZED)
        )
        await common.empty_ciphertext(self.api, self.report, "v1.bad.empty_ciphertext", Sealed(b""))
        await common.undecodable(self.api, self.report, "v1.bad.undecodable")

    async def burst(self) -> None:
        good = self.trips.good()[:BURST_DEKS]
        size = self.session.settings.burst
        if not good:
            for rule_id in ("v1.burst", "v1.burst.second_connection"):
                self.report.add(rule_id, Outcome.FAIL, "unproven: no cipher round-tripped")
            self.report.add("v1.burst.throughput", Outcome.FIGURE, "not measured")
            return
        second = self.session.connect()
        started = time.perf_counter()
        warm = await self._version(on=second)  # as the apiserver's interceptor does
        warm_seconds = time.perf_counter() - started

        def read(seed: bytes, sealed: Sealed) -> common.BurstCall:
            async def call() -> str | None:
                plain, reply = await self.api.decrypt(sealed)
                return common.describe_failure(plain, reply, seed)

            return call

        async def write() -> str | None:
            sealed, reply = await self.api.encrypt(os.urandom(common.SEED_SIZE))
            if sealed is None:
                return reply.code
            if not 0 < len(sealed.ciphertext) <= V1_MAX_CIPHER:
                return f"cipher of {len(sealed.ciphertext)} bytes"
            return None

        async def probe() -> str | None:
            return await self._probe(on=second)

        # The apiserver's defaults split its in-flight limit 400 reads : 200 writes.
        reads = size * 2 // 3
        calls = [read(*good[i % len(good)]) for i in range(reads)]
        calls += [write for _ in range(size - reads)]
        async with self.session.reserve(3 * self.session.settings.timeout + 1):
            outcome = await common.burst(calls, probe)
        outcome.probe_latencies.insert(0, warm_seconds)  # the connection's first call
        if warm:
            outcome.probe_failures.insert(0, f"first call: {warm}")
        what = f"calls ({reads} Decrypts of {len(good)} DEKs, {size - reads} Encrypts)"
        common.report_burst(self.report, "v1", size, what, outcome)

    async def authority(self) -> None:
        endpoint = self.session.settings.endpoint
        path = f"@{endpoint.path}" if endpoint.abstract else endpoint.path
        problem = await self._version(on=self.session.connect(authority=path))
        if problem:
            self.report.add("v1.authority", Outcome.FAIL, problem)
        else:
            self.report.add("v1.authority", Outcome.PASS, f":authority {path[:48]}")
