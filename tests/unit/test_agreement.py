"""The key_id agreement verdict and what it reads from apiservers (kmsplug.cluster.agreement).

End to end on three real apiservers and plugins: tests/e2e/test_ha_rotation.py.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from kmsplug.cluster import agreement as ag
from kmsplug.cluster.agreement import Agreement, NodeReport

OLD, NEW = "alibaba:key-1:v1", "alibaba:key-1:v2"
METRIC = ag.STATUS_METRIC


def sample(key_id: str, provider: str, seconds: float) -> str:
    labels = f'apiserver_id_hash="sha256:aa",key_id_hash="{ag.key_id_hash(key_id)}"'
    return f'{METRIC}{{{labels},provider_name="{provider}"}} {seconds!r}'


METRICS = "\n".join(
    [
        f"# HELP {METRIC} [ALPHA] Last time in seconds when a keyID was returned by Status.",
        f"# TYPE {METRIC} gauge",
        sample(OLD, "kmsplug", 1.7e09),
        sample(NEW, "kmsplug", 1.70000006e09),
        sample(OLD, "other", 1.6e09),
        "# TYPE apiserver_storage_objects gauge",
        'apiserver_storage_objects{resource="secrets"} 12',
        "",
    ]
)


def test_key_id_hash_is_the_apiservers() -> None:
    # kube-apiserver's metrics: "sha256:" and the full hex digest of the key_id's bytes
    assert ag.key_id_hash(OLD) == "sha256:" + hashlib.sha256(OLD.encode()).hexdigest()


def test_the_latest_status_answer_per_provider_wins() -> None:
    latest = ag.latest_status_hashes(METRICS)
    assert latest == {
        "kmsplug": (ag.key_id_hash(NEW), 1.70000006e09),
        "other": (ag.key_id_hash(OLD), 1.6e09),
    }
    assert ag.latest_status_hashes("# nothing here\n") == {}


def test_failing_kms_checks_are_named() -> None:
    verbose = "[+]ping ok\n[-]kms-provider-0 failed: reason withheld\n[+]kms-provider-1 ok\n"
    assert ag.failing_kms_checks(verbose) == ["kms-provider-0"]
    assert ag.failing_kms_checks("[+]kms-providers ok\n") == []


def report(node: str, key_id: str = OLD, problem: str = "") -> NodeReport:
    return NodeReport(node, key_id_hash=ag.key_id_hash(key_id) if key_id else "", problem=problem)


@pytest.mark.parametrize(
    ("reports", "expected", "verdict"),
    [
        ([report("a"), report("b"), report("c")], "", ag.AGREE),
        ([report("a"), report("b", NEW), report("c")], "", ag.DISAGREE),
        ([report("a"), report("b"), report("c", problem="unreachable")], "", ag.UNKNOWN),
        ([report("a", NEW), report("b", NEW)], OLD, ag.DISAGREE),  # all agree, on another key
        ([report("a", NEW), report("b", NEW)], NEW, ag.AGREE),
        ([report("a", ""), report("b", "")], "", ag.AGREE),  # no KMS v2 anywhere: nothing to differ
        ([report("a", ""), report("b")], "", ag.DISAGREE),  # one node without the provider
        ([], "", ag.UNKNOWN),
    ],
)
def test_verdict(reports: list[NodeReport], expected: str, verdict: str) -> None:
    result = Agreement(reports, ag.key_id_hash(expected) if expected else "")
    assert result.verdict == verdict
    assert result.summary().startswith(verdict)
    assert ag.EXIT_CODES[verdict] == {"agree": 0, "disagree": 1, "unknown": 2}[verdict]


def test_the_table_names_each_node_and_its_problem() -> None:
    table = Agreement([report("unix:///a.sock"), report("https://b:6443", problem="HTTP 403")])
    text = table.table()
    assert "unix:///a.sock" in text and "HTTP 403" in text
    assert text.splitlines()[-1].startswith("unknown: https://b:6443: HTTP 403")


def test_apiservers_are_found_behind_the_kubernetes_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint_slice = SimpleNamespace(
        ports=[SimpleNamespace(name="https", port=6443)],
        endpoints=[
            SimpleNamespace(addresses=["10.0.0.1"]),
            SimpleNamespace(addresses=["10.0.0.2", "fd00::3"]),
        ],
    )

    class FakeDiscovery:
        def __init__(self, _client: object) -> None:
            pass

        def list_namespaced_endpoint_slice(self, namespace: str, **kwargs: object) -> object:
            assert namespace == "default"
            assert kwargs["label_selector"] == "kubernetes.io/service-name=kubernetes"
            return SimpleNamespace(items=[endpoint_slice])

    from kubernetes import client, config

    monkeypatch.setattr(client, "DiscoveryV1Api", FakeDiscovery)
    monkeypatch.setattr(config, "new_client_from_config", lambda config_file: object())
    assert ag.discover_apiservers(None, 5.0) == [
        "https://10.0.0.1:6443",
        "https://10.0.0.2:6443",
        "https://[fd00::3]:6443",
    ]


def test_one_kubeconfig_lends_its_credentials_to_every_apiserver_url() -> None:
    targets, warning = ag.apiserver_targets(
        ["admin.conf"], ["https://a:6443", "https://b:6443"], discover=True, timeout=1
    )
    assert targets == [
        ag.Apiserver("admin.conf", "https://a:6443"),
        ag.Apiserver("admin.conf", "https://b:6443"),
    ]
    assert warning == ""
    with pytest.raises(ag.ConfigError, match="single --kubeconfig"):
        ag.apiserver_targets(["a", "b"], ["https://a:6443"], discover=True, timeout=1)
    each, _ = ag.apiserver_targets(["a", "b"], [], discover=True, timeout=1)
    assert each == [ag.Apiserver("a"), ag.Apiserver("b")]
