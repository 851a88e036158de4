"""The suite against a test-only plugin: clean it conforms; each fault fails its own checks.

The plugin (reference_plugin.py) shares no code with kmsplug. Every fault below is a way a
real plugin could break a rule; the test asserts the exact set of required checks that
fail, so a check that passes when it should not (or fails when it should not) shows up.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_helpers import StartReference, conformance

from kmsplug.conformance.rules import ALL
from kmsplug.endpoint import Endpoint

#: A deadline no load on a shared test machine reaches, and a budget that fits it; the
#: tests whose point is a deadline (hang, crash, one call at a time) set their own.
GENEROUS = ("--timeout", "10", "--budget", "150")

V1_TAMPER = {f"v1.tamper.{k}" for k in ("flipped", "truncated", "extended", "random")}
V2_TAMPER = {f"v2.tamper.{k}" for k in ("flipped", "truncated", "extended", "random")}

#: fault -> the required checks it must fail (with --api both), and nothing else.
FAULTS: dict[str, set[str]] = {
    "wrong-key-id": {"v2.encrypt.key_id"},
    "big-ciphertext": {"v2.encrypt.ciphertext"},
    "huge-v1-cipher": {"v1.cipher", "v1.burst"},
    "unauthenticated": V2_TAMPER | V1_TAMPER,
    "non-fqdn-annotation": {"v2.encrypt.annotation_keys"},
    "huge-annotations": {"v2.encrypt.annotations_size"},
    "bad-version": {"v2.status.version"},
    "unhealthy": {
        "v2.status.healthz",
        "v2.status.after_refusals",
        "v2.burst.second_connection",
    },
    "sticky-errors": {"v2.status.after_refusals", "v2.burst.second_connection"},
    "flip-flop": {"v2.status.stable"},
    "long-key-id": {"v2.status.key_id"},
    "ignore-key-id": {"v2.decrypt.unknown_key_id"},
    "v1-wrong-version": {"v1.version", "v1.burst.second_connection", "v1.authority"},
    "v1-no-ping": {"v1.probe", "v1.burst.second_connection"},
}


def test_the_clean_reference_plugin_conforms(reference_plugin: StartReference) -> None:
    run = conformance(reference_plugin().endpoint, "--api", "both", *GENEROUS)
    assert run.code == 0, run.report
    assert run.report["conforms"] is True
    assert run.ids() == set(ALL)  # every rule was checked, none skipped
    assert all(check["rule"] and check["source"] for check in run.report["checks"])
    assert not run.failing()
    assert run.outcome("v2.encrypt.randomized") == "figure"
    assert "different" in run.check("v2.encrypt.randomized")["detail"]
    assert run.check("v2.burst")["figures"]["n"] == 600  # the apiserver's 400 + 200


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_fails_exactly_its_checks(reference_plugin: StartReference, fault: str) -> None:
    run = conformance(reference_plugin(fault).endpoint, "--api", "both", *GENEROUS)
    assert run.code == 1
    assert run.report["conforms"] is False
    assert run.failing() == FAULTS[fault], {
        c["id"]: c["detail"] for c in run.report["checks"] if c["id"] in run.failing()
    }


def test_wrong_plaintexts_are_named(reference_plugin: StartReference) -> None:
    run = conformance(reference_plugin("unauthenticated").endpoint, *GENEROUS)
    assert "WRONG plaintext" in run.check("v2.tamper.flipped")["detail"]


def test_informative_findings_never_block(reference_plugin: StartReference) -> None:
    run = conformance(reference_plugin("deterministic", "v2beta1").endpoint, *GENEROUS)
    assert run.code == 0
    assert "identical" in run.check("v2.encrypt.randomized")["detail"]
    assert run.outcome("v2.status.version") == "warn"  # v2beta1 works, flagged as old


def test_a_hang_on_bad_input_is_caught(reference_plugin: StartReference) -> None:
    # A short deadline, so the hang costs little; a small burst, so the deadline is only
    # ever missed by the hang.
    plugin = reference_plugin("hang-on-empty")
    run = conformance(plugin.endpoint, "--api", "both", "--timeout", "2", "--burst", "20")
    assert run.failing() == {"v2.bad.empty_plaintext", "v1.bad.empty_plaintext"}
    assert "no answer within 2 s" in run.check("v2.bad.empty_plaintext")["detail"]


def test_a_crash_on_bad_input_is_caught(reference_plugin: StartReference) -> None:
    run = conformance(
        reference_plugin("crash-on-short").endpoint, "--timeout", "5", "--burst", "20"
    )
    detail = run.check("v2.bad.empty_ciphertext")["detail"]
    assert run.outcome("v2.bad.empty_ciphertext") == "fail"
    assert "connection dropped" in detail or "stopped answering" in detail
    # everything that came before the crash passed
    assert run.outcome("v2.roundtrip") == "pass"
    assert run.outcome("v2.tamper.random") == "pass"


def test_a_plugin_that_serialises_calls_fails_the_burst(reference_plugin: StartReference) -> None:
    # 600 calls at 20 ms each, one at a time, cannot all finish within a 1 s deadline.
    run = conformance(reference_plugin("serial").endpoint, "--timeout", "1")
    # The second connection fails too when its calls queue behind the burst; whether its
    # first call got in ahead of the burst is up to the scheduler, so only the burst is sure.
    assert "v2.burst" in run.failing()
    assert run.failing() <= {"v2.burst", "v2.burst.second_connection"}
    assert "DEADLINE_EXCEEDED" in run.check("v2.burst")["detail"]


@pytest.fixture
def silent_socket(short_tmp: Path) -> Iterator[Endpoint]:
    """A socket that accepts connections and never says a word (a wedged plugin)."""
    path = short_tmp / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield Endpoint(path=str(path))
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    listener.close()


def test_a_wedged_plugin_is_bounded_by_the_budget(silent_socket: Endpoint) -> None:
    run = conformance(silent_socket, "--timeout", "1", "--budget", "6")
    assert run.code == 1
    assert run.seconds < 60  # the budget (6 s) plus process start-up, with room for load
    outcomes = {c["outcome"] for c in run.report["checks"]}
    assert "not run" in outcomes
    assert run.outcome("v2.status.version") in ("fail", "not run")


def test_nothing_listening_fails_every_required_check(short_tmp: Path) -> None:
    run = conformance(Endpoint(path=str(short_tmp / "absent.sock")), "--api", "both")
    assert run.code == 1
    assert run.failing() == {r for r in ALL if ALL[r].required}
