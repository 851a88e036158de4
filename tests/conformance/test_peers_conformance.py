"""The real peer plugins under `kmsplug conformance`: what CONFORMANCE.md says of each.

Each peer (built from its pinned source by tests/peers/runners.py) runs on its KMS as in
the published table (plugins_under_test.py: local-kms, OpenBao, the strict Alibaba fake
over HTTPS with HMAC-SHA1 signatures). The test asserts the exact set of required checks
it fails, and its warnings, so a change in a peer or in a check shows up here. A peer
that cannot be built here is skipped with the runner's reason.

The burst rows depend on the machine's load, not only on the plugin (a loaded 2-core
machine turns a 3 s deadline into a coin toss for a plugin bounded by its KMS, and a
plugin's own KMS-call timeout turns into UNAVAILABLE or another error), so here they are
informative, with the floor that load cannot move: not one wrong plaintext. A crash or a
dropped connection in the burst shows in the required checks that run after it (bad
input, :authority), which are asserted. Where a peer fails a burst row by behaviour, not
by time, that is asserted too (aws-encryption-provider's health check answers 'err'
after refusals). The calls carry a 10 s deadline, as an operator may set `timeout`, so a
slow moment cannot fail a non-burst check either; the table (publish.py) uses the
default 3 s. The burst rows are printed (pytest -s) and recorded as a property.

`test_published_table_says_the_same` checks, without running anything, that the table in
CONFORMANCE.md claims what these tests assert.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from plugins_under_test import BURST_ROWS, PEERS, Plugin, Unavailable, running
from publish import LOAD_ROW, read_published
from run_helpers import Run, conformance

from kmsplug.conformance.rules import ALL as RULES

#: Required checks each peer fails, the burst rows aside (CONFORMANCE.md explains each).
FAILS = {
    "aws-encryption-provider": {"v2.decrypt.unknown_key_id", "v2.status.after_refusals"},
    "vault-kubernetes-kms": {"v2.decrypt.unknown_key_id"},
    "ack-kms-plugin": set(),
    "ack-kms-plugin-v2": {"v2.decrypt.unknown_key_id"},
}
#: Checks that pass with a warning.
WARNS = {"aws-encryption-provider": {"v2.status.version"}}  # it answers v2beta1
#: Burst rows a peer fails by what it answers, whatever the load: (row, detail).
BURST_BEHAVIOUR = {
    # its shared health state still holds the refusals that came just before the burst
    "aws-encryption-provider": {"v2.burst.second_connection": "healthz 'err'"},
}


def expected_ids(plugin: Plugin) -> set[str]:
    apis = ("v1",) if plugin.api == "v1" else ("v2", "v1")
    return {rule_id for rule_id in RULES if rule_id.split(".")[0] in apis}


def describe(run: Run) -> str:
    return "\n".join(
        f"  {c['id']}: {c['outcome']}: {c['detail']}"
        for c in run.report["checks"]
        if c["outcome"] not in ("pass", "figure")
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a cold peer build takes minutes
@pytest.mark.parametrize("plugin", PEERS, ids=[p.name for p in PEERS])
def test_peer_fails_exactly_what_the_table_says(
    plugin: Plugin, short_tmp: Path, record_property: Any
) -> None:
    try:
        with running(plugin, short_tmp) as (daemon, kms):
            run = conformance(
                daemon.endpoint, "--api", plugin.api, "--timeout", "10", "--budget", "150",
                timeout=600,
            )  # fmt: skip
    except Unavailable as exc:
        pytest.skip(str(exc))
    checks = {c["id"]: c for c in run.report["checks"]}
    bursts = {row: f"{checks[row]['outcome']}: {checks[row]['detail']}" for row in BURST_ROWS
              if row in checks}  # fmt: skip
    record_property("burst", bursts)
    print(f"{plugin.name} (informative burst rows at 10 s):")
    for row, text in bursts.items():
        print(f"  {row}: {text}")

    assert set(checks) == expected_ids(plugin)
    assert not {c for c in checks if checks[c]["outcome"] == "not run"}, describe(run)
    behaviour = BURST_BEHAVIOUR.get(plugin.name, {})
    failing = run.failing() - set(BURST_ROWS)
    assert failing == FAILS[plugin.name], describe(run)
    warned = {c for c, check in checks.items() if check["outcome"] == "warn"}
    assert warned == WARNS.get(plugin.name, set()), describe(run)
    for row, detail in behaviour.items():
        assert checks[row]["outcome"] == "fail" and detail in checks[row]["detail"], bursts
    for row in ("v2.burst", "v1.burst"):
        if row in checks:  # the count is in every burst row, pass or fail
            assert checks[row]["figures"]["wrong_plaintexts"] == 0, f"{row}: {bursts[row]}"
    assert run.code == (0 if not run.failing() else 1)
    for secret in kms.secrets:  # the report never carries the KMS's secrets
        assert secret not in str(run.report)


def test_published_table_says_the_same() -> None:
    """CONFORMANCE.md's peer columns claim what the test above asserts (burst rows
    aside, except the behavioural ones), and each column says its run's load."""
    published = read_published()
    for plugin in PEERS:
        labels = [label for label in published if label.startswith(f"{plugin.name} ")]
        assert len(labels) == 1, f"no single column for {plugin.name} in {sorted(published)}"
        column = published[labels[0]]
        rows = {row: cell for row, cell in column.items() if row in RULES}
        assert {row for row, cell in rows.items() if cell != "n/a"} == expected_ids(plugin)
        required = {row: cell for row, cell in rows.items() if RULES[row].required}
        failing = {row for row, cell in required.items() if cell == "**FAIL**"}
        behaviour = set(BURST_BEHAVIOUR.get(plugin.name, {}))
        assert failing - set(BURST_ROWS) == FAILS[plugin.name], labels[0]
        assert behaviour <= failing, labels[0]
        warned = {row for row, cell in required.items() if cell == "warn"}
        assert warned == WARNS.get(plugin.name, set()), labels[0]
        assert not {row for row, cell in required.items() if cell == "**not run**"}
        assert "→" in column[LOAD_ROW], labels[0]


def test_published_parts_are_replaced_and_read_back() -> None:
    from publish import marker, replace_part

    doc = f"intro\n{marker('results')}\nold\n{marker('results', end=True)}\noutro\n"
    table = "| check | kind | a 1 | b 2 |\n|---|---|---|---|\n"
    table += "| `v1.burst` | required | pass | **FAIL** |"
    new = replace_part(doc, "results", table)
    assert new.startswith("intro\n") and new.endswith("\noutro\n") and "old" not in new
    assert read_published(new) == {"a 1": {"v1.burst": "pass"}, "b 2": {"v1.burst": "**FAIL**"}}
    with pytest.raises(SystemExit):
        replace_part("no markers here", "results", table)
