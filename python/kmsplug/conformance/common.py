"""Checks both APIs share: round trips, tampering, bad input, the burst."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kmsplug.conformance import alter
from kmsplug.conformance.apis import Api, Sealed
from kmsplug.conformance.report import Outcome, Report, latency_summary, ms
from kmsplug.conformance.wire import NO_ANSWER, UNDECODABLE_RESPONSE, Connection, Reply

SEED_SIZE = 32  # what the apiserver sends: a v2 seed or a v1 DEK
OVERSIZED = 1 << 20
#: Pause between the second connection's calls during a burst, so that watching does not
#: itself become load; and a cap on how many it makes.
PROBE_PAUSE = 0.02
PROBE_CAP = 500


@dataclass
class RoundTrips:
    """Fresh seeds, what Encrypt returned for each, and what Decrypt gave back."""

    seeds: list[bytes] = field(default_factory=list)
    sealed: list[Sealed | None] = field(default_factory=list)
    encrypts: list[Reply] = field(default_factory=list)
    opened: list[bytes | None] = field(default_factory=list)
    decrypts: list[Reply] = field(default_factory=list)

    def good(self) -> list[tuple[bytes, Sealed]]:
        """(seed, sealed) pairs whose round trip was exact: material for later checks."""
        return [
            (seed, sealed)
            for seed, sealed, plain in zip(self.seeds, self.sealed, self.opened, strict=True)
            if sealed is not None and plain == seed
        ]

    def first_encrypt_failure(self) -> Reply | None:
        return next((r for r in self.encrypts if not r.ok), None)


async def round_trips(api: Api, count: int) -> RoundTrips:
    trips = RoundTrips()
    for _ in range(count):
        seed = os.urandom(SEED_SIZE)
        sealed, reply = await api.encrypt(seed)
        trips.seeds.append(seed)
        trips.sealed.append(sealed)
        trips.encrypts.append(reply)
    for sealed in trips.sealed:
        if sealed is None:
            trips.opened.append(None)
            continue
        plain, reply = await api.decrypt(sealed)
        trips.opened.append(plain)
        trips.decrypts.append(reply)
    return trips


def report_round_trips(report: Report, rule_id: str, trips: RoundTrips) -> None:
    failure = trips.first_encrypt_failure()
    if failure is not None:
        report.add(rule_id, Outcome.FAIL, f"Encrypt failed: {failure.describe()}")
        return
    wrong = [p for p, s in zip(trips.opened, trips.seeds, strict=True) if p is not None and p != s]
    errors = [r for r in trips.decrypts if not r.ok]
    if errors:
        report.add(rule_id, Outcome.FAIL, f"Decrypt failed: {errors[0].describe()}")
    elif wrong:
        report.add(rule_id, Outcome.FAIL, f"{len(wrong)} of {len(trips.seeds)} came back different")
    else:
        report.add(rule_id, Outcome.PASS, f"{len(trips.seeds)} of {len(trips.seeds)} exact")


def report_latency(report: Report, rule_id: str, replies: Sequence[Reply]) -> None:
    times = [r.seconds for r in replies if r.ok]
    if not times:
        report.add(rule_id, Outcome.FIGURE, "no successful call")
        return
    text, figures = latency_summary(times)
    report.add(rule_id, Outcome.FIGURE, text, **figures)


async def report_randomized(
    api: Api, report: Report, rule_id: str, good: list[tuple[bytes, Sealed]]
) -> None:
    if not good:
        report.add(rule_id, Outcome.FIGURE, "no ciphertext to compare")
        return
    seed, first = good[0]
    again, reply = await api.encrypt(seed)
    if again is None:
        report.add(rule_id, Outcome.FIGURE, f"second Encrypt failed: {reply.describe()}")
    elif again.ciphertext == first.ciphertext:
        report.add(rule_id, Outcome.FIGURE, "identical (deterministic encryption)", randomized=0)
    else:
        report.add(rule_id, Outcome.FIGURE, "different", randomized=1)


async def tamper(
    api: Api,
    report: Report,
    rule_id: str,
    good: list[tuple[bytes, Sealed]],
    variants: Callable[[Sealed], list[tuple[str, Sealed]]],
) -> None:
    """Decrypt altered copies of a good ciphertext: an error or the original plaintext are
    the only acceptable answers."""
    if not good:
        report.add(rule_id, Outcome.FAIL, "unproven: no ciphertext round-tripped to alter")
        return
    seed, sealed = good[0]
    counts: Counter[str] = Counter()
    failures: list[str] = []
    for name, altered in variants(sealed):
        plain, reply = await api.decrypt(altered)
        if plain is not None:
            if plain == seed:
                counts["returned the original"] += 1
            else:
                failures.append(f"{name}: returned a WRONG plaintext")
        elif reply.code in NO_ANSWER or reply.code == UNDECODABLE_RESPONSE:
            failures.append(f"{name}: {reply.describe()}")
        else:
            counts[f"refused {reply.code}"] += 1
    summary = ", ".join(f"{n} {what}" for what, n in counts.most_common())
    if failures:
        report.add(
            rule_id, Outcome.FAIL, "; ".join(failures[:3]) + (f" ({summary})" if summary else "")
        )
    else:
        report.add(rule_id, Outcome.PASS, summary)


async def _clean(api: Api, reply: Reply, connection: Connection) -> str | None:
    """None if the plugin gave a real answer and still answers on the same connection."""
    if reply.code == "DEADLINE_EXCEEDED":
        return f"no answer within {api.session.settings.timeout:g} s"
    if reply.code in NO_ANSWER and not connection.is_ready():
        return f"connection dropped or refused ({reply.describe()})"
    if reply.code == UNDECODABLE_RESPONSE:
        return "answered OK with bytes that are not the response message"
    after = await api.alive(on=connection)
    if not after.ok:
        return f"stopped answering afterwards ({after.describe()})"
    return None


async def bad_plaintext(api: Api, report: Report, rule_id: str, plaintext: bytes) -> None:
    """An error is a clean answer; so is a ciphertext that decrypts back exactly."""
    connection = api.session.main
    sealed, reply = await api.encrypt(plaintext)
    problem = await _clean(api, reply, connection)
    if problem is None and sealed is not None:
        plain, back = await api.decrypt(sealed)
        if plain != plaintext:
            problem = (
                "accepted, but its ciphertext does not decrypt back "
                f"({back.describe() if plain is None else 'different plaintext'})"
            )
    if problem:
        report.add(rule_id, Outcome.FAIL, problem)
    elif sealed is None:
        report.add(rule_id, Outcome.PASS, f"refused {reply.describe()}")
    else:
        report.add(rule_id, Outcome.PASS, "accepted; round-trips exactly")


async def empty_ciphertext(api: Api, report: Report, rule_id: str, template: Sealed) -> None:
    plain, reply = await api.decrypt(template.but(ciphertext=b""))
    problem = await _clean(api, reply, api.session.main)
    if problem is None and plain is not None:
        problem = f"returned a {len(plain)}-byte plaintext for an empty ciphertext"
    if problem:
        report.add(rule_id, Outcome.FAIL, problem)
    else:
        report.add(rule_id, Outcome.PASS, f"refused {reply.code}")


async def undecodable(api: Api, report: Report, rule_id: str) -> None:
    connection = api.session.main
    cases = [
        (f"{method.rsplit('/', 1)[1]} {name}", method, payload, False)
        for method in api.methods
        for name, payload in alter.MALFORMED_PROTOBUF
    ]
    cases += api.utf8_requests()
    codes: Counter[str] = Counter()
    failures = []
    for name, method, payload, may_succeed in cases:
        reply = await api.session.call(method, payload)
        problem = await _clean(api, reply, connection)
        if problem is None and reply.ok and not may_succeed:
            problem = "accepted"
        if problem:
            failures.append(f"{name}: {problem}")
        else:
            codes[reply.code] += 1
    summary = ", ".join(f"{n} {code}" for code, n in codes.most_common())
    if failures:
        report.add(rule_id, Outcome.FAIL, "; ".join(failures[:3]))
    else:
        report.add(rule_id, Outcome.PASS, f"{len(cases)} requests: {summary}")


BurstCall = Callable[[], Awaitable[str | None]]


@dataclass
class BurstResult:
    wall: float = 0.0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    probe_failures: list[str] = field(default_factory=list)
    probe_latencies: list[float] = field(default_factory=list)


#: How a burst call that answered with another plaintext is counted.
WRONG_PLAINTEXT = "WRONG plaintext"


async def _timed(call: BurstCall) -> tuple[str | None, float]:
    started = time.perf_counter()
    failure = await call()
    return failure, time.perf_counter() - started


async def burst(calls: Sequence[BurstCall], probe: BurstCall) -> BurstResult:
    """All `calls` at once; meanwhile `probe` (on another connection) in a loop."""
    result = BurstResult()
    done = asyncio.Event()

    async def watch() -> None:
        for _ in range(PROBE_CAP):
            failure, seconds = await _timed(probe)
            result.probe_latencies.append(seconds)
            if failure:
                result.probe_failures.append(failure)
            if done.is_set():
                return
            await asyncio.sleep(PROBE_PAUSE)

    started = time.perf_counter()
    watcher = asyncio.create_task(watch())
    outcomes = await asyncio.gather(*(_timed(call) for call in calls))
    result.wall = time.perf_counter() - started
    done.set()
    await watcher
    for failure, seconds in outcomes:
        result.latencies.append(seconds)
        if failure:
            result.failures.append(failure)
    return result


def report_burst(report: Report, prefix: str, size: int, what: str, outcome: BurstResult) -> None:
    text, figures = latency_summary(outcome.latencies)
    counts = Counter(outcome.failures)
    # Wrong plaintexts are the failure that loses data: always counted, never hidden
    # behind the three commonest kinds.
    figures["wrong_plaintexts"] = float(counts[WRONG_PLAINTEXT])
    if outcome.failures:
        kinds = counts.most_common(3)
        if counts[WRONG_PLAINTEXT] and WRONG_PLAINTEXT not in dict(kinds):
            kinds.append((WRONG_PLAINTEXT, counts[WRONG_PLAINTEXT]))
        listed = "; ".join(f"{n}x {failure}" for failure, n in kinds)
        report.add(
            f"{prefix}.burst",
            Outcome.FAIL,
            f"{len(outcome.failures)} of {size} failed: {listed}",
            **figures,
        )
    else:
        report.add(f"{prefix}.burst", Outcome.PASS, f"{size} {what}, all exact; {text}", **figures)
    probe_text, probe_figures = latency_summary(outcome.probe_latencies)
    if outcome.probe_failures:
        report.add(
            f"{prefix}.burst.second_connection",
            Outcome.FAIL,
            f"{len(outcome.probe_failures)} of {len(outcome.probe_latencies)} failed: "
            f"{outcome.probe_failures[0]}",
            **probe_figures,
        )
    else:
        report.add(f"{prefix}.burst.second_connection", Outcome.PASS, probe_text, **probe_figures)
    rate = size / outcome.wall if outcome.wall > 0 else 0.0
    report.add(
        f"{prefix}.burst.throughput",
        Outcome.FIGURE,
        f"{size} calls in {ms(outcome.wall)}: {rate:.0f} calls/s",
        calls_per_second=rate,
        wall_ms=outcome.wall * 1000,
    )


def describe_failure(plain: bytes | None, reply: Reply, expected: bytes) -> str | None:
    """For burst calls: None if the plaintext is exact, else a short reason."""
    if plain is None:
        return reply.code
    return None if plain == expected else WRONG_PLAINTEXT
