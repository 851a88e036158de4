"""KMS v2 checks (rules in rules.V2)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from kmsplug.conformance import alter, common
from kmsplug.conformance.apis import V2, Sealed
from kmsplug.conformance.fqdn import fqdn_problem
from kmsplug.conformance.report import Outcome, Report, latency_summary
from kmsplug.conformance.rules import V2_MAX_ANNOTATIONS, V2_MAX_CIPHERTEXT, V2_MAX_KEY_ID
from kmsplug.conformance.session import Session
from kmsplug.conformance.wire import NO_ANSWER

Step = tuple[tuple[str, ...], Callable[[], Awaitable[None]]]

#: How many distinct ciphertexts the burst decrypts (after a restart the apiserver holds
#: one seed per earlier apiserver process and key_id: a handful).
BURST_SEEDS = 8


def _short(text: str, limit: int = 48) -> str:
    """Head and tail of a long value (key_ids often differ only at the end)."""
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return text[:half] + "..." + text[-half:]


class V2Checks:
    def __init__(self, session: Session, report: Report) -> None:
        self.session = session
        self.report = report
        self.api = V2(session)
        self.status_key_id: str | None = None
        self.trips = common.RoundTrips()

    def steps(self) -> list[Step]:
        return [
            (
                (
                    "v2.status.version",
                    "v2.status.healthz",
                    "v2.status.key_id",
                    "v2.status.stable",
                    "v2.status.latency",
                ),
                self.status,
            ),
            (
                (
                    "v2.encrypt.key_id",
                    "v2.encrypt.ciphertext",
                    "v2.encrypt.annotation_keys",
                    "v2.encrypt.annotations_size",
                    "v2.encrypt.distinct",
                    "v2.roundtrip",
                    "v2.encrypt.latency",
                    "v2.decrypt.latency",
                    "v2.encrypt.randomized",
                ),
                self.encrypt_decrypt,
            ),
            (("v2.decrypt.unknown_key_id",), self.unknown_key_id),
            (
                (
                    "v2.tamper.flipped",
                    "v2.tamper.truncated",
                    "v2.tamper.extended",
                    "v2.tamper.random",
                    "v2.tamper.annotations",
                    "v2.tamper.key_id",
                ),
                self.tamper,
            ),
            (("v2.status.after_refusals",), self.healthy_after_refusals),
            # The burst before the bad input: it measures load alone, on a plugin no odd
            # request has disturbed yet.
            (("v2.burst", "v2.burst.second_connection", "v2.burst.throughput"), self.burst),
            (
                (
                    "v2.bad.empty_plaintext",
                    "v2.bad.oversized_plaintext",
                    "v2.bad.empty_ciphertext",
                    "v2.bad.undecodable",
                ),
                self.bad_input,
            ),
            (("v2.status.after_bad_input",), self.healthy_after_bad_input),
            (("v2.authority",), self.authority),
        ]

    async def status(self) -> None:
        settings = self.session.settings
        replies = [await self.api.alive(wait=True)]  # the apiserver waits for the socket too
        started = time.perf_counter()
        while len(replies) < settings.samples:
            if time.perf_counter() - started > settings.sample_seconds and len(replies) >= 10:
                break
            replies.append(await self.api.alive())
        parsed = [self.api.read_status(reply) for reply in replies]
        statuses = [status for status, _ in parsed if status is not None]
        failed = [reply for status, reply in parsed if status is None]
        add = self.report.add
        if not statuses:
            why = f"Status failed: {failed[0].describe()}"
            for rule_id in ("version", "healthz", "key_id", "stable", "latency"):
                add(f"v2.status.{rule_id}", Outcome.FAIL, why)
            return
        self.status_key_id = statuses[-1].key_id

        version = statuses[0].version
        if version == "v2":
            add("v2.status.version", Outcome.PASS, "v2")
        elif version == "v2beta1":
            add(
                "v2.status.version",
                Outcome.WARN,
                "v2beta1: the pre-GA name, accepted by 1.27+; 1.29+ recommend v2",
            )
        else:
            add("v2.status.version", Outcome.FAIL, f"{version!r}")

        unhealthy = [s.healthz for s in statuses if s.healthz != "ok"]
        if unhealthy:
            add("v2.status.healthz", Outcome.FAIL, f"healthz {_short(unhealthy[0])!r}")
        else:
            add("v2.status.healthz", Outcome.PASS, "ok")

        key_id_problems = [self._key_id_problem(s.key_id) for s in statuses]
        problem = next((p for p in key_id_problems if p), None)
        if problem:
            add("v2.status.key_id", Outcome.FAIL, problem)
        else:
            key_id = statuses[0].key_id
            size = len(key_id.encode())
            add("v2.status.key_id", Outcome.PASS, f"{_short(key_id)!r} ({size} bytes)")

        seen = {(s.version, s.key_id) for s in statuses}
        if len(seen) == 1:
            add("v2.status.stable", Outcome.PASS, f"{len(statuses)} calls, one version and key_id")
        else:
            changes = ", ".join(sorted(f"{v}/{_short(k, 24)}" for v, k in seen))
            add("v2.status.stable", Outcome.FAIL, f"changed between calls: {changes}")

        timeout = settings.timeout
        text, figures = latency_summary([r.seconds for r in replies if r.ok])
        if failed:
            add(
                "v2.status.latency",
                Outcome.FAIL,
                f"{len(failed)} of {len(replies)} Status calls failed: {failed[0].describe()}",
                **figures,
            )
        elif figures["p99_ms"] >= timeout * 1000:
            add("v2.status.latency", Outcome.FAIL, f"{text}: p99 over {timeout:g} s", **figures)
        else:
            add("v2.status.latency", Outcome.PASS, f"{text} (limit {timeout:g} s)", **figures)

    @staticmethod
    def _key_id_problem(key_id: str) -> str | None:
        if not key_id:
            return "empty key_id"
        size = len(key_id.encode())
        if size > V2_MAX_KEY_ID:
            return f"key_id is {size} bytes, over {V2_MAX_KEY_ID}"
        return None

    async def encrypt_decrypt(self) -> None:
        trips = self.trips = await common.round_trips(self.api, self.session.settings.round_trips)
        add = self.report.add
        common.report_latency(self.report, "v2.encrypt.latency", trips.encrypts)
        common.report_latency(self.report, "v2.decrypt.latency", trips.decrypts)
        failure = trips.first_encrypt_failure()
        if failure is not None:
            why = f"unproven: Encrypt failed: {failure.describe()}"
            for rule_id in ("key_id", "ciphertext", "annotation_keys", "annotations_size"):
                add(f"v2.encrypt.{rule_id}", Outcome.FAIL, why)
            add("v2.encrypt.distinct", Outcome.FAIL, why)
            common.report_round_trips(self.report, "v2.roundtrip", trips)
            add("v2.encrypt.randomized", Outcome.FIGURE, "Encrypt failed")
            return
        sealed = [s for s in trips.sealed if s is not None]

        if self.status_key_id is None:
            add("v2.encrypt.key_id", Outcome.FAIL, "unproven: no Status key_id to compare")
        else:
            other = [s.key_id for s in sealed if s.key_id != self.status_key_id]
            if other:
                add(
                    "v2.encrypt.key_id",
                    Outcome.FAIL,
                    f"Encrypt key_id {_short(other[0])!r} != Status key_id "
                    f"{_short(self.status_key_id)!r}",
                )
            else:
                add("v2.encrypt.key_id", Outcome.PASS, f"{len(sealed)} of {len(sealed)} equal")

        sizes = [len(s.ciphertext) for s in sealed]
        if min(sizes) == 0:
            add("v2.encrypt.ciphertext", Outcome.FAIL, "empty ciphertext")
        elif max(sizes) > V2_MAX_CIPHERTEXT:
            add(
                "v2.encrypt.ciphertext",
                Outcome.FAIL,
                f"{max(sizes)} bytes, over {V2_MAX_CIPHERTEXT}",
            )
        else:
            add("v2.encrypt.ciphertext", Outcome.PASS, f"{min(sizes)}-{max(sizes)} bytes")

        keys = sorted({key for s in sealed for key in s.annotations})
        bad_keys = [f"{_short(key)!r}: {fqdn_problem(key)}" for key in keys if fqdn_problem(key)]
        if bad_keys:
            add("v2.encrypt.annotation_keys", Outcome.FAIL, bad_keys[0])
        elif keys:
            add("v2.encrypt.annotation_keys", Outcome.PASS, ", ".join(keys)[:100])
        else:
            add("v2.encrypt.annotation_keys", Outcome.PASS, "no annotations")

        total = max(sum(len(k.encode()) + len(v) for k, v in s.annotations.items()) for s in sealed)
        if total > V2_MAX_ANNOTATIONS:
            add(
                "v2.encrypt.annotations_size",
                Outcome.FAIL,
                f"{total} bytes, over {V2_MAX_ANNOTATIONS}",
            )
        else:
            add("v2.encrypt.annotations_size", Outcome.PASS, f"at most {total} bytes")

        tuples = {(s.ciphertext, s.key_id, tuple(sorted(s.annotations.items()))) for s in sealed}
        if len(tuples) == len(sealed):
            add("v2.encrypt.distinct", Outcome.PASS, f"{len(sealed)} plaintexts, all distinct")
        else:
            add(
                "v2.encrypt.distinct",
                Outcome.FAIL,
                f"{len(sealed)} distinct plaintexts gave {len(tuples)} distinct responses",
            )

        common.report_round_trips(self.report, "v2.roundtrip", trips)
        await common.report_randomized(self.api, self.report, "v2.encrypt.randomized", trips.good())

    async def unknown_key_id(self) -> None:
        good = self.trips.good()
        if not good:
            self.report.add(
                "v2.decrypt.unknown_key_id", Outcome.FAIL, "unproven: no ciphertext round-tripped"
            )
            return
        _, sealed = good[0]
        accepted, codes = [], []
        # Foreign key_ids only: the apiserver validates a stored key_id (non-empty, at most
        # 1 KiB) before it calls Decrypt, so an empty one never reaches a plugin.
        foreign = [(n, k) for n, k in alter.other_key_ids(sealed.key_id) if k]
        for name, key_id in foreign:
            plain, reply = await self.api.decrypt(sealed.but(key_id=key_id))
            if plain is not None:
                accepted.append(name)
            elif reply.code in NO_ANSWER:
                accepted.append(f"{name}: {reply.describe()}")
            else:
                codes.append(reply.code)
        if accepted:
            self.report.add(
                "v2.decrypt.unknown_key_id", Outcome.FAIL, f"decrypted with {', '.join(accepted)}"
            )
        else:
            self.report.add(
                "v2.decrypt.unknown_key_id", Outcome.PASS, f"refused {', '.join(codes)}"
            )

    async def tamper(self) -> None:
        good = self.trips.good()

        def ciphertexts(
            make: Callable[[bytes], list[alter.Variant]],
        ) -> Callable[[Sealed], list[tuple[str, Sealed]]]:
            return lambda s: [(name, s.but(ciphertext=c)) for name, c in make(s.ciphertext)]

        for kind, make in (
            ("flipped", alter.flipped),
            ("truncated", alter.truncated),
            ("extended", alter.extended),
            ("random", alter.random_like),
        ):
            await common.tamper(self.api, self.report, f"v2.tamper.{kind}", good, ciphertexts(make))
        await common.tamper(
            self.api,
            self.report,
            "v2.tamper.annotations",
            good,
            lambda s: [
                (n, s.but(annotations=a)) for n, a in alter.altered_annotations(s.annotations)
            ],
        )
        await common.tamper(
            self.api,
            self.report,
            "v2.tamper.key_id",
            good,
            lambda s: [(n, s.but(key_id=k)) for n, k in alter.other_key_ids(s.key_id)],
        )

    async def _healthz(self) -> str:
        status, reply = self.api.read_status(await self.api.alive())
        if status is None:
            return f"Status failed: {reply.describe()}"
        return "ok" if status.healthz == "ok" else f"healthz {_short(status.healthz)!r}"

    async def healthy_after_refusals(self) -> None:
        health = await self._healthz()
        if health == "ok":
            self.report.add("v2.status.after_refusals", Outcome.PASS, "healthz ok")
        else:
            self.report.add("v2.status.after_refusals", Outcome.FAIL, health)

    async def healthy_after_bad_input(self) -> None:
        health = await self._healthz()
        self.report.add("v2.status.after_bad_input", Outcome.FIGURE, health)

    async def bad_input(self) -> None:
        await common.bad_plaintext(self.api, self.report, "v2.bad.empty_plaintext", b"")
        await common.bad_plaintext(
            self.api, self.report, "v2.bad.oversized_plaintext", bytes(common.OVERSIZED)
        )
        template = Sealed(b"", self.status_key_id or "", {})
        good = self.trips.good()
        if good:
            template = good[0][1]
        await common.empty_ciphertext(self.api, self.report, "v2.bad.empty_ciphertext", template)
        await common.undecodable(self.api, self.report, "v2.bad.undecodable")

    async def burst(self) -> None:
        good = self.trips.good()[:BURST_SEEDS]
        size = self.session.settings.burst
        if not good:
            for rule_id in ("v2.burst", "v2.burst.second_connection"):
                self.report.add(rule_id, Outcome.FAIL, "unproven: no ciphertext round-tripped")
            self.report.add("v2.burst.throughput", Outcome.FIGURE, "not measured")
            return
        second = self.session.connect()
        warm = await self.api.alive(on=second, wait=True)

        def decrypt(seed: bytes, sealed: Sealed) -> common.BurstCall:
            async def call() -> str | None:
                plain, reply = await self.api.decrypt(sealed)
                return common.describe_failure(plain, reply, seed)

            return call

        async def probe() -> str | None:
            reply = await self.api.alive(on=second)
            status, reply = self.api.read_status(reply)
            if status is None:
                return reply.describe()
            return None if status.healthz == "ok" else f"healthz {_short(status.healthz)!r}"

        calls = [decrypt(*good[i % len(good)]) for i in range(size)]
        async with self.session.reserve(2 * self.session.settings.timeout + 1):
            outcome = await common.burst(calls, probe)
        outcome.probe_latencies.insert(0, warm.seconds)  # the connection's first call
        if not warm.ok:
            outcome.probe_failures.insert(0, f"first call: {warm.describe()}")
        common.report_burst(self.report, "v2", size, f"Decrypts of {len(good)} seeds", outcome)

    async def authority(self) -> None:
        endpoint = self.session.settings.endpoint
        path = f"@{endpoint.path}" if endpoint.abstract else endpoint.path
        connection = self.session.connect(authority=path)
        reply = await self.api.alive(on=connection, wait=True)
        if reply.ok:
            self.report.add("v2.authority", Outcome.PASS, f":authority {_short(path)}")
        else:
            self.report.add("v2.authority", Outcome.FAIL, reply.describe())
