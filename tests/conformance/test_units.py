"""The suite's pure parts: the FQDN rule, the alterations, percentiles, the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmsplug.cli import main
from kmsplug.conformance import alter
from kmsplug.conformance.fqdn import fqdn_problem
from kmsplug.conformance.report import Outcome, Report, percentile
from kmsplug.conformance.rules import ALL, DEFAULT_BURST


@pytest.mark.parametrize(
    "name",
    [
        "version.encryption.remote.io",
        "local-kek.kms.kubernetes.io",
        "a.b",
        "x-acs-request-id.ack.alibabacloud.com",
        "example.com.",  # one trailing dot is dropped
        "0.9",
        ("a" * 63) + ".com",
    ],
)
def test_fqdn_accepts(name: str) -> None:
    assert fqdn_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "localhost",  # one label
        "kms.example.io/remote-kms-auditid",  # the docs' own example: '/' is refused
        "Upper.example.com",
        "under_score.example.com",
        "*.example.com",
        "a@b.com",
        "host:80.example.com",
        "-lead.example.com",
        "trail-.example.com",
        "a..b",
        "example.com..",
        ("a" * 64) + ".com",
        ".".join(["abcdefghi"] * 26),  # 259 characters
    ],
)
def test_fqdn_refuses(name: str) -> None:
    assert fqdn_problem(name) is not None


def test_every_alteration_differs_from_the_original() -> None:
    original = bytes(range(60))
    for make in (alter.flipped, alter.truncated, alter.extended, alter.random_like):
        variants = make(original)
        assert variants, make.__name__
        for name, altered in variants:
            assert altered != original, name
            assert altered, name  # empty is the bad-input check's job


def test_annotation_alterations_cover_drop_change_and_add() -> None:
    original = {"a.example.com": b"1", "b.example.com": b"2"}
    variants = dict(alter.altered_annotations(original))
    assert variants["all annotations dropped"] == {}
    assert variants["a.example.com dropped"] == {"b.example.com": b"2"}
    assert variants["a.example.com value altered"]["a.example.com"] != b"1"
    assert "extra.conformance.example.com" in variants["extra annotation added"]
    assert all(v != original for v in variants.values())
    assert [name for name, _ in alter.altered_annotations({})] == ["extra annotation added"]


def test_other_key_ids_are_never_the_original() -> None:
    assert all(k != "kek-1" for _, k in alter.other_key_ids("kek-1"))


def test_percentile_is_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 0.5) == 50
    assert percentile(samples, 0.99) == 99
    assert percentile([3.0, 1.0, 2.0], 0.99) == 3  # small samples: the max


def test_only_required_failures_and_unrun_checks_block() -> None:
    report = Report("unix:///x", {})
    report.add("v2.status.version", Outcome.WARN, "v2beta1")
    report.add("v2.encrypt.latency", Outcome.FIGURE, "slow")
    assert report.conforms
    report.add("v2.status.healthz", Outcome.NOT_RUN)
    assert not report.conforms
    assert "v2.status.healthz" in report.table()


def test_catalogue_is_sized_and_sourced() -> None:
    assert DEFAULT_BURST == 600  # 400 read-only + 200 mutating in flight
    for rule in ALL.values():
        assert rule.rule and rule.source, rule.id
    # every required rule names where it comes from, not just "informative"
    assert all(r.source != "informative" for r in ALL.values() if r.required)


def test_compare_puts_reports_side_by_side(tmp_path: Path) -> None:
    good, bad = Report("unix:///a", {}, label="good"), Report("unix:///b", {}, label="bad")
    good.add("v2.status.version", Outcome.PASS)
    bad.add("v2.status.version", Outcome.FAIL, "'v3'")
    good.add("v2.burst.throughput", Outcome.FIGURE, "x", calls_per_second=812.4)
    paths = []
    for report in (good, bad):
        path = tmp_path / f"{report.label}.json"
        path.write_text(json.dumps(report.as_json()))
        paths += ["--compare", str(path)]
    result = CliRunner().invoke(main, ["conformance", *paths])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "| check | kind | good | bad |"
    assert "| `v2.status.version` | required | pass | **FAIL** |" in lines
    assert "| `v2.burst.throughput` | info | 812/s | n/a |" in lines
    assert lines[-1] == "| **verdict** | | **conforms** | **does not conform** |"


def test_rules_lists_every_rule_with_its_source() -> None:
    result = CliRunner().invoke(main, ["conformance", "--rules"])
    assert result.exit_code == 0
    rows = result.output.splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == list(ALL)
    assert all(row.count("|") == 6 for row in rows)  # no cell breaks the table


def test_a_burst_counts_every_wrong_plaintext_even_behind_other_failures() -> None:
    from kmsplug.conformance.common import WRONG_PLAINTEXT, BurstResult, report_burst

    failures = ["DEADLINE_EXCEEDED"] * 50 + ["UNAVAILABLE"] * 20 + ["INTERNAL"] * 10
    outcome = BurstResult(
        wall=1.0, failures=[*failures, WRONG_PLAINTEXT], latencies=[0.1] * 600,
        probe_latencies=[0.01],
    )  # fmt: skip
    report = Report("unix:///x.sock", {})
    report_burst(report, "v2", 600, "Decrypts", outcome)
    burst = report.results[0]
    assert burst.outcome is Outcome.FAIL
    assert burst.figures["wrong_plaintexts"] == 1
    assert f"1x {WRONG_PLAINTEXT}" in burst.detail  # not hidden by the three commonest
    clean = Report("unix:///x.sock", {})
    quiet = BurstResult(wall=1.0, latencies=[0.1] * 600, probe_latencies=[0.01])
    report_burst(clean, "v2", 600, "Decrypts", quiet)
    assert clean.results[0].outcome is Outcome.PASS
    assert clean.results[0].figures["wrong_plaintexts"] == 0
