"""Classifying etcd values the way `kmsplug verify` reports them."""

from __future__ import annotations

import pytest

from kmsplug._proto.v2.encrypted_object_pb2 import EncryptedObject
from kmsplug.cluster.etcd import prefix_end
from kmsplug.cluster.storage import classify
from kmsplug.cluster.verify import Expectation, resource_of, storage_path, verify


def v2_value(name: str, key_id: str) -> bytes:
    body = EncryptedObject(encryptedData=b"x", keyID=key_id, encryptedDEKSource=b"y")
    return f"k8s:enc:kms:v2:{name}:".encode() + body.SerializeToString()


@pytest.mark.parametrize(
    ("value", "kind", "provider", "key_id"),
    [
        (b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret", "identity", "", ""),
        (b'{"kind":"Secret"}', "identity", "", ""),
        (v2_value("kmsplug", "local-abc"), "kms-v2", "kmsplug", "local-abc"),
        (b"k8s:enc:kms:v1:old:\x00\x03abcpayload", "kms-v1", "old", ""),
        (b"k8s:enc:aesgcm:v1:key1:....", "aesgcm", "key1", ""),
        (b"k8s:enc:aescbc:v1:key2:....", "aescbc", "key2", ""),
        (b"k8s:enc:secretbox:v1:k:....", "secretbox", "k", ""),
        (b"k8s:enc:what", "unknown", "", ""),
    ],
)
def test_classify(value: bytes, kind: str, provider: str, key_id: str) -> None:
    storage = classify(value)
    assert (storage.kind, storage.provider, storage.key_id) == (kind, provider, key_id)


def test_verify_flags_plaintext_and_wrong_key() -> None:
    values = [
        (b"/registry/secrets/a/s1", v2_value("kmsplug", "k1")),
        (b"/registry/secrets/a/s2", b"k8s\x00plain"),
        (b"/registry/secrets/b/s3", v2_value("kmsplug", "k0")),
        (b"/registry/configmaps/a/c1", b"k8s\x00plain"),
    ]
    report = verify(
        values, prefix=b"/registry", resources=["secrets"], expect=Expectation(key_id="k1")
    )
    assert report.total == 3
    assert [k for k, _ in report.unexpected] == ["/registry/secrets/a/s2", "/registry/secrets/b/s3"]
    assert not report.ok
    assert "FAIL" in report.table()
    good = verify(values[:1], prefix=b"/registry", resources=["secrets"], expect=Expectation())
    assert good.ok


def test_resource_of_and_prefix_end() -> None:
    assert resource_of(b"/registry/secrets/ns/name", b"/registry") == "secrets"
    assert resource_of(b"/registry/example.com/widgets/ns/w", b"/registry") == "example.com/widgets"
    assert prefix_end(b"/registry/") == b"/registry0"
    assert prefix_end(b"a\xff") == b"b"


@pytest.mark.parametrize(
    ("resource", "path"),
    [
        ("secrets", "secrets"),
        ("configmaps", "configmaps"),
        ("deployments.apps", "deployments"),
        ("apps/deployments", "deployments"),  # the older spelling
        ("cronjobs.batch", "cronjobs"),
        ("clusterroles.rbac.authorization.k8s.io", "clusterroles"),
        ("services", "services/specs"),
        ("endpoints", "services/endpoints"),
        ("nodes", "minions"),
        ("replicationcontrollers", "controllers"),
        ("ingresses.networking.k8s.io", "ingress"),
        (
            "customresourcedefinitions.apiextensions.k8s.io",
            "apiextensions.k8s.io/customresourcedefinitions",
        ),
        ("apiservices.apiregistration.k8s.io", "apiregistration.k8s.io/apiservices"),
        ("widgets.example.com", "example.com/widgets"),
    ],
)
def test_storage_path_is_where_kube_apiserver_keeps_the_resource(resource: str, path: str) -> None:
    assert storage_path(resource) == path
