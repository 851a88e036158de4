"""kmsplug under a real kube-apiserver writing to a real etcd.

Every check goes through the apiserver (the official Python client) or reads etcd's raw
bytes; nothing here talks to kmsplug directly except to start, stop or swap it.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kmsplug.cluster.storage import classify
from kmsplug.encryption_config import encryption_configuration

from bed import ClusterBed
from configs import identity_config, kms_config, merged_config
from fakes.alibaba_kms import FakeAlibabaKms
from plugin_process import PluginFactory, PluginProcess

pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_secrets(bed: ClusterBed, count: int, prefix: str = "s") -> dict[str, str]:
    """Create `count` Secrets in default; return name -> the secret value."""
    core = bed.core()
    made: dict[str, str] = {}
    for i in range(count):
        name, value = f"{prefix}-{i}-{secrets.token_hex(3)}", f"top-secret-{secrets.token_hex(12)}"
        core.create_namespaced_secret(
            "default", {"metadata": {"name": name}, "stringData": {"password": value}}
        )
        made[name] = value
    return made


def read_back(bed: ClusterBed, made: dict[str, str]) -> None:
    core = bed.core()
    for name, value in made.items():
        data = core.read_namespaced_secret(name, "default").data
        assert base64.b64decode(data["password"]).decode() == value


def assert_stored(bed: ClusterBed, made: dict[str, str], prefix: bytes) -> set[str]:
    """Each Secret's etcd value carries `prefix` and no trace of its plaintext; key_ids seen."""
    key_ids: set[str] = set()
    for name, value in made.items():
        raw = bed.raw(f"/registry/secrets/default/{name}")
        assert raw.startswith(prefix), raw[:40]
        assert value.encode() not in raw
        assert base64.b64encode(value.encode()) not in raw
        key_ids.add(classify(raw).key_id)
    return key_ids


def kmsplug_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kmsplug", *args], capture_output=True, text=True, timeout=600
    )


def test_v2_secrets_encrypted_survive_plugin_and_apiserver_restarts(
    plugin_factory: PluginFactory, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    plugin = plugin_factory()
    bed = bed_factory(kms_config(short_tmp / "enc.yaml", plugin.endpoint))
    made = make_secrets(bed, 10)
    key_ids = assert_stored(bed, made, b"k8s:enc:kms:v2:kmsplug:")
    assert len(key_ids) == 1 and next(iter(key_ids)).startswith("local-")
    read_back(bed, made)
    assert plugin.terminate() == 0
    plugin = plugin_factory(key_file=plugin.key_file)
    read_back(bed, made)
    bed.restart_apiserver()  # a cold apiserver must Decrypt every seed through the plugin
    read_back(bed, made)
    verify = kmsplug_cli("verify", "--etcd", bed.etcd_url, "--expect", "kms-v2", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["total"] == 10


def test_v1_secrets_encrypted(
    plugin_factory: PluginFactory, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    plugin = plugin_factory()
    config = kms_config(short_tmp / "enc.yaml", plugin.endpoint, "--api", "v1", "--name", "legacy")
    bed = bed_factory(config, feature_gates=("KMSv1=true",))
    made = make_secrets(bed, 10)
    key_ids = assert_stored(bed, made, b"k8s:enc:kms:v1:legacy:")
    assert len(key_ids) == 1 and next(iter(key_ids)).startswith("local-")
    read_back(bed, made)
    bed.restart_apiserver()
    read_back(bed, made)


def test_key_rotation_then_migrate_moves_everything_to_the_new_key_id(
    plugin_factory: PluginFactory, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    plugin = plugin_factory()
    bed = bed_factory(kms_config(short_tmp / "enc.yaml", plugin.endpoint))
    old = make_secrets(bed, 8, "old")
    (old_key_id,) = assert_stored(bed, old, b"k8s:enc:kms:v2:kmsplug:")
    plugin.terminate()
    new_key = short_tmp / "new.key"
    plugin = plugin_factory("--decrypt-key-file", str(plugin.key_file), key_file=new_key)

    def writes_use_new_key() -> bool:
        bed.get("/readyz/kms-providers")  # a health probe makes the apiserver ask Status
        probe = make_secrets(bed, 1, "probe")
        return assert_stored(bed, probe, b"k8s:enc:kms:v2:") != {old_key_id}

    wait_for(writes_use_new_key, 150, "the apiserver to pick up the new key_id")
    new = make_secrets(bed, 4, "new")
    (new_key_id,) = assert_stored(bed, new, b"k8s:enc:kms:v2:kmsplug:")
    assert new_key_id != old_key_id
    read_back(bed, {**old, **new})
    before = kmsplug_cli("verify", "--etcd", bed.etcd_url, "--expect-key-id", new_key_id)
    assert before.returncode == 1, before.stdout
    state = short_tmp / "migrate.state"
    migrated = kmsplug_cli(
        "migrate", "--kubeconfig", str(bed.kubeconfig), "--state-file", str(state)
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "rewrote" in migrated.stdout
    after = kmsplug_cli("verify", "--etcd", bed.etcd_url, "--expect-key-id", new_key_id, "--json")
    assert after.returncode == 0, after.stdout
    assert {row["key_id"] for row in json.loads(after.stdout)["stored"]} == {new_key_id}
    read_back(bed, {**old, **new})
    again = kmsplug_cli("migrate", "--kubeconfig", str(bed.kubeconfig), "--state-file", str(state))
    assert again.returncode == 0 and "rewrote 0" in again.stdout  # resumed: nothing left


def test_enabling_encryption_on_an_existing_cluster(
    plugin_factory: PluginFactory, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    bed = bed_factory(identity_config(short_tmp / "identity.yaml"))
    made = make_secrets(bed, 10, "plain")
    raw = bed.raw(f"/registry/secrets/default/{next(iter(made))}")
    assert made[next(iter(made))].encode() in raw  # stored in plaintext before
    assert kmsplug_cli("verify", "--etcd", bed.etcd_url).returncode == 1
    plugin = plugin_factory()
    bed.restart_apiserver(kms_config(short_tmp / "enc.yaml", plugin.endpoint))
    read_back(bed, made)  # identity is listed last: old values stay readable
    dry = kmsplug_cli("migrate", "--kubeconfig", str(bed.kubeconfig), "--dry-run")
    assert dry.returncode == 0 and "would rewrite" in dry.stdout, dry.stderr
    assert kmsplug_cli("verify", "--etcd", bed.etcd_url).returncode == 1  # dry run wrote nothing
    migrated = kmsplug_cli("migrate", "--kubeconfig", str(bed.kubeconfig))
    assert migrated.returncode == 0, migrated.stderr
    verify = kmsplug_cli("verify", "--etcd", bed.etcd_url, "--json")
    assert verify.returncode == 0, verify.stdout
    assert_stored(bed, made, b"k8s:enc:kms:v2:kmsplug:")
    read_back(bed, made)


def test_verify_reads_an_etcd_that_wants_client_certificates(
    plugin: PluginProcess, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    """etcd as kubeadm runs it (TLS, client certificates required): the apiserver and
    `kmsplug verify` both present one; without it verify fails with a clear message."""
    bed = bed_factory(kms_config(short_tmp / "enc.yaml", plugin.endpoint), etcd_tls=True)
    assert bed.etcd_url.startswith("https://") and bed.etcd_pki is not None
    made = make_secrets(bed, 5)
    assert_stored(bed, made, b"k8s:enc:kms:v2:kmsplug:")
    pki = bed.etcd_pki
    certs = ("--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key))
    report = kmsplug_cli("verify", "--etcd", bed.etcd_url, *certs, "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["total"] >= len(made)
    for partial in (("--cacert", str(pki.ca)), ()):  # no client cert; not even our CA
        refused = kmsplug_cli("verify", "--etcd", bed.etcd_url, *partial)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "cannot read etcd" in refused.stderr and "Traceback" not in refused.stderr


def test_verify_finds_each_resource_where_kube_apiserver_stores_it(
    plugin: PluginProcess, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    """ConfigMaps, Deployments (a built-in group: stored by plural alone) and a custom
    resource (stored under its group), all encrypted; verify and migrate take the names
    an EncryptionConfiguration uses, and a misspelt one is flagged, not passed."""
    from kubernetes import client

    resources = ("secrets", "configmaps", "deployments.apps", "widgets.example.com")
    flags = [arg for name in resources for arg in ("--resource", name)]
    bed = bed_factory(kms_config(short_tmp / "enc.yaml", plugin.endpoint, *flags))
    api = bed.core().api_client
    client.ApiextensionsV1Api(api).create_custom_resource_definition(
        {
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
    )

    def widget_created() -> bool:
        try:
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "example.com", "v1", "default", "widgets",
                {"apiVersion": "example.com/v1", "kind": "Widget",
                 "metadata": {"name": "w1"}, "spec": {"colour": "secret-blue"}},
            )  # fmt: skip
        except client.ApiException as exc:
            if exc.status == 404:  # the CRD is not served yet
                return False
            raise
        return True

    wait_for(widget_created, 60, "the Widget CRD to be served")
    bed.core().create_namespaced_config_map(
        "default", {"metadata": {"name": "cm1"}, "data": {"k": "confidential-value"}}
    )
    client.AppsV1Api(api).create_namespaced_deployment(
        "default",
        {
            "metadata": {"name": "d1"},
            "spec": {
                "selector": {"matchLabels": {"app": "d1"}},
                "template": {
                    "metadata": {"labels": {"app": "d1"}},
                    "spec": {"containers": [{"name": "c", "image": "example.invalid/c"}]},
                },
            },
        },
    )
    named = [arg for name in resources[1:] for arg in ("--resource", name)]
    report = kmsplug_cli("verify", "--etcd", bed.etcd_url, *named, "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    document = json.loads(report.stdout)
    assert document["empty"] == []
    seen = {(row["resource"], row["kind"]) for row in document["stored"]}
    assert {(name, "kms-v2") for name in resources[1:]} <= seen, seen
    older = kmsplug_cli("verify", "--etcd", bed.etcd_url, "--resource", "apps/deployments")
    assert older.returncode == 0, older.stdout
    typo = kmsplug_cli("verify", "--etcd", bed.etcd_url, "--resource", "secrets",
                       "--resource", "deployment.apps")  # fmt: skip
    assert "nothing stored for 'deployment.apps'" in typo.stdout
    migrated = kmsplug_cli("migrate", "--kubeconfig", str(bed.kubeconfig), *named)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr


def test_plugin_down_fails_kms_health_and_recovers(
    plugin_factory: PluginFactory, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    plugin = plugin_factory()
    bed = bed_factory(kms_config(short_tmp / "enc.yaml", plugin.endpoint))
    assert bed.get("/readyz/kms-providers")[0] == 200
    plugin.kill()
    wait_for(lambda: bed.get("/readyz/kms-providers")[0] != 200, 90, "kms-providers to fail")
    status, body = bed.get("/readyz/kms-providers?verbose")
    assert status != 200
    assert "kms-provider" in body  # the apiserver names the failing plugin check
    plugin_factory(key_file=plugin.key_file, endpoint=plugin.endpoint)
    wait_for(lambda: bed.get("/readyz/kms-providers")[0] == 200, 90, "kms-providers to recover")
    made = make_secrets(bed, 2, "after")
    assert_stored(bed, made, b"k8s:enc:kms:v2:kmsplug:")
    read_back(bed, made)


def test_one_socket_serves_a_v2_and_a_v1_provider(
    plugin: PluginProcess, bed_factory: Callable[..., ClusterBed], short_tmp: Path
) -> None:
    config = merged_config(
        short_tmp / "enc.yaml",
        encryption_configuration(plugin.endpoint, name="kv2", resources=["secrets"]),
        encryption_configuration(plugin.endpoint, api="v1", name="kv1", resources=["configmaps"]),
    )
    bed = bed_factory(config, feature_gates=("KMSv1=true",))
    made = make_secrets(bed, 3)
    assert_stored(bed, made, b"k8s:enc:kms:v2:kv2:")
    core = bed.core()
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "cm"}, "data": {"k": "visible-value-123"}}
    )
    raw = bed.raw("/registry/configmaps/default/cm")
    assert raw.startswith(b"k8s:enc:kms:v1:kv1:")
    assert b"visible-value-123" not in raw
    assert core.read_namespaced_config_map("cm", "default").data == {"k": "visible-value-123"}
    bed.restart_apiserver()
    read_back(bed, made)
    assert core.read_namespaced_config_map("cm", "default").data == {"k": "visible-value-123"}


def test_alibaba_provider_behind_a_real_apiserver(
    plugin_factory: PluginFactory,
    bed_factory: Callable[..., ClusterBed],
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeAlibabaKms() as fake:
        key = fake.create_key()
        access = fake.add_access_key()
        monkeypatch.setenv("ACCESS_KEY_ID", access.access_key_id)
        monkeypatch.setenv("ACCESS_KEY_SECRET", access.access_key_secret)
        plugin = plugin_factory(
            *("--provider", "alibaba", "--key-id", key, "--region", fake.region),
            *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
        )
        bed = bed_factory(kms_config(short_tmp / "enc.yaml", plugin.endpoint))
        made = make_secrets(bed, 20)
        (key_id,) = assert_stored(bed, made, b"k8s:enc:kms:v2:kmsplug:")
        assert key_id == f"alibaba:{key}:{fake.describe(key).primary_key_version}"
        bed.restart_apiserver()
        read_back(bed, made)
        # start-up preflight and probes only: no KMS call per Secret
        assert sum(fake.call_counts.values()) < 20


def test_migrating_from_alibaba_to_vault_on_a_live_cluster(
    plugin_factory: PluginFactory,
    bed_factory: Callable[..., ClusterBed],
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two providers at once: Vault writes, Alibaba stays readable, migrate moves the rest."""
    from vault.devserver import transit_server

    with FakeAlibabaKms() as fake, transit_server(short_tmp / "bao") as bao:
        cmk = fake.create_key()
        access = fake.add_access_key()
        for name, value in {
            "ACCESS_KEY_ID": access.access_key_id,
            "ACCESS_KEY_SECRET": access.access_key_secret,
            "VAULT_ADDR": bao.address,
            "VAULT_TOKEN": bao.root_token,
            "KMSPLUG_VAULT_TRANSIT_KEY": "k8s",
        }.items():
            monkeypatch.setenv(name, value)
        alibaba = (
            *("--key-id", cmk, "--region", fake.region),
            *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
        )
        plugin = plugin_factory("--provider", "alibaba", *alibaba)
        bed = bed_factory(kms_config(short_tmp / "enc.yaml", plugin.endpoint))
        old = make_secrets(bed, 10, "old")
        (old_key_id,) = assert_stored(bed, old, b"k8s:enc:kms:v2:kmsplug:")
        assert old_key_id.startswith("alibaba:")
        plugin.terminate()
        plugin = plugin_factory(
            "--provider", "vault", "--decrypt-provider", "alibaba", *alibaba,
            key_file=plugin.key_file, endpoint=plugin.endpoint,
        )  # fmt: skip

        def writes_use_vault() -> bool:
            bed.get("/readyz/kms-providers")
            probe = make_secrets(bed, 1, "probe")
            return next(iter(assert_stored(bed, probe, b"k8s:enc:"))).startswith("vault:")

        wait_for(writes_use_vault, 150, "the apiserver to pick up the Vault key_id")
        read_back(bed, old)  # still readable through the decrypt-only Alibaba provider
        migrated = kmsplug_cli("migrate", "--kubeconfig", str(bed.kubeconfig))
        assert migrated.returncode == 0, migrated.stderr
        report = kmsplug_cli("verify", "--etcd", bed.etcd_url, "--json")
        key_ids = {row["key_id"] for row in json.loads(report.stdout)["stored"]}
        assert len(key_ids) == 1 and next(iter(key_ids)).startswith("vault:transit/k8s:")
        read_back(bed, old)


@pytest.mark.parametrize("provider", ["pkcs11", "aws", "vault"])
def test_each_provider_behind_a_real_apiserver(
    provider: str,
    plugin_factory: PluginFactory,
    bed_factory: Callable[..., ClusterBed],
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The core v2 flow (write, raw check, apiserver restart, read back) for each KMS,
    configured as an operator would: settings as flags, secrets in the environment."""
    import contextlib

    with contextlib.ExitStack() as stack:
        prefix, flags = _provider_setup(provider, short_tmp, monkeypatch, stack)
        plugin = plugin_factory("--provider", provider, *flags)
        bed = bed_factory(kms_config(short_tmp / "enc.yaml", plugin.endpoint))
        made = make_secrets(bed, 10)
        (key_id,) = assert_stored(bed, made, b"k8s:enc:kms:v2:kmsplug:")
        assert key_id.startswith(prefix), key_id
        bed.restart_apiserver()
        read_back(bed, made)


def test_vault_kubernetes_auth_through_the_clusters_own_token_review(
    plugin_factory: PluginFactory,
    bed_factory: Callable[..., ClusterBed],
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kmsplug logs in to OpenBao with a service-account token of the cluster; OpenBao
    checks it with a TokenReview on the real apiserver; that apiserver then encrypts its
    Secrets through kmsplug. A token of an account the role does not bind is refused at
    start-up with a message that says so."""
    from kubernetes import client

    from vault.devserver import transit_server

    for name in ("VAULT_ADDR", "VAULT_TOKEN", "KMSPLUG_VAULT_TOKEN", "KMSPLUG_VAULT_AUTH"):
        monkeypatch.delenv(name, raising=False)
    bed = bed_factory(identity_config(short_tmp / "identity.yaml"))
    core = bed.core()

    def service_account_token(name: str) -> Path:
        core.create_namespaced_service_account("kube-system", {"metadata": {"name": name}})
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        issued = core.create_namespaced_service_account_token(name, "kube-system", request)
        path = short_tmp / f"{name}.jwt"
        path.write_text(issued.status.token)
        return path

    reviewer, kmsplug_jwt, other_jwt = map(service_account_token, ("bao", "kmsplug", "other"))
    with transit_server(short_tmp / "bao") as bao:
        bao.api("POST", "sys/auth/kubernetes", {"type": "kubernetes"})
        ca_cert = (bed.workdir / "certs" / "apiserver.crt").read_text()
        bao.api(
            "POST",
            "auth/kubernetes/config",
            {
                "kubernetes_host": bed.server_url,
                "kubernetes_ca_cert": ca_cert,
                "token_reviewer_jwt": reviewer.read_text(),
                "disable_local_ca_jwt": True,
            },
        )
        bao.api(
            "POST",
            "auth/kubernetes/role/kmsplug",
            {
                "bound_service_account_names": ["kmsplug"],
                "bound_service_account_namespaces": ["kube-system"],
                "token_policies": [bao.transit_policy("kms", "k8s")],
                "token_ttl": "1h",
            },
        )
        flags = (
            *("--provider", "vault", "--vault-address", bao.address),
            *("--vault-transit-key", "k8s", "--vault-auth", "kubernetes"),
            *("--vault-role", "kmsplug"),
        )
        with pytest.raises(RuntimeError, match="exited with 1") as refused:
            plugin_factory(*flags, "--vault-jwt-file", str(other_jwt), name="other")
        assert "kubernetes login at auth/kubernetes refused" in str(refused.value)
        plugin = plugin_factory(*flags, "--vault-jwt-file", str(kmsplug_jwt))
        bed.restart_apiserver(kms_config(short_tmp / "enc.yaml", plugin.endpoint))
        made = make_secrets(bed, 10)
        (key_id,) = assert_stored(bed, made, b"k8s:enc:kms:v2:kmsplug:")
        assert key_id.startswith("vault:transit/k8s:"), key_id
        bed.restart_apiserver()
        read_back(bed, made)
        for jwt in (kmsplug_jwt, other_jwt):
            assert jwt.read_text() not in plugin.log()


def _provider_setup(
    provider: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, stack: object
) -> tuple[str, list[str]]:
    """Start the provider's real server or device and put its secret in the environment;
    returns the key_id prefix to expect and the serve flags for the rest."""
    from contextlib import ExitStack

    assert isinstance(stack, ExitStack)
    if provider == "pkcs11":
        from hsm.softhsm import SoftHsm

        hsm = SoftHsm(tmp / "hsm").create()
        monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
        hsm.init_token("k8s", "1234")
        hsm.keygen("k8s", "1234", "kek", "01")
        monkeypatch.setenv("KMSPLUG_PKCS11_PIN", "1234")
        return "pkcs11:k8s/kek:", [
            *("--pkcs11-library", hsm.env()["KMSPLUG_PKCS11_LIBRARY"]),
            *("--pkcs11-token", "k8s", "--pkcs11-key-label", "kek"),
        ]
    if provider == "aws":
        from aws.emulator import CREDENTIALS, REGION, LocalKms

        (tmp / "aws").mkdir()
        kms = LocalKms(tmp / "aws").start()
        stack.callback(kms.stop)
        for name, value in CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        return "aws:arn:aws:kms:", [
            *("--aws-key", kms.create_key(), "--aws-endpoint", kms.endpoint),
            *("--aws-region", REGION),
        ]
    from vault.devserver import transit_server

    bao = stack.enter_context(transit_server(tmp / "bao"))
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    return "vault:transit/k8s:", ["--vault-address", bao.address, "--vault-transit-key", "k8s"]
