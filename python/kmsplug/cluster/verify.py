"""`kmsplug verify`: report how each stored object is encrypted, and fail on surprises.

Reads etcd directly (read-only), so it sees exactly what an attacker with a copy of etcd
would: a value without a `k8s:enc:` prefix is plaintext.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kmsplug.cluster.etcd import EtcdReader
from kmsplug.cluster.storage import Storage, classify


@dataclass(frozen=True, slots=True)
class Expectation:
    """What every value must look like; an empty field accepts anything."""

    kinds: tuple[str, ...] = ("kms-v2", "kms-v1")
    provider: str = ""
    key_id: str = ""

    def accepts(self, storage: Storage) -> bool:
        return (
            (not self.kinds or storage.kind in self.kinds)
            and (not self.provider or storage.provider == self.provider)
            and (not self.key_id or storage.key_id == self.key_id)
        )


# kube-apiserver keeps a few resources under historical etcd paths
# (pkg/kubeapiserver SpecialDefaultResourcePrefixes).
_SPECIAL_PATHS = {
    ("", "replicationcontrollers"): "controllers",
    ("", "endpoints"): "services/endpoints",
    ("", "nodes"): "minions",
    ("", "services"): "services/specs",
    ("extensions", "ingresses"): "ingress",
    ("networking.k8s.io", "ingresses"): "ingress",
}
# Served by the API servers kube-apiserver embeds, which prefix their paths with the group.
_GROUP_PATH_GROUPS = frozenset({"apiextensions.k8s.io", "apiregistration.k8s.io"})


def storage_path(resource: str) -> str:
    """Where kube-apiserver stores a resource, below its etcd prefix.

    `resource` is named as in an EncryptionConfiguration: `secrets`, `deployments.apps`,
    `widgets.example.com` (the older `apps/deployments` spelling is accepted too).
    Built-in groups are stored by plural alone (`deployments`); custom resources, CRDs
    and APIServices under `<group>/<plural>`.
    """
    if "/" in resource:
        group, _, plural = resource.partition("/")
    else:
        plural, _, group = resource.partition(".")
    special = _SPECIAL_PATHS.get((group, plural))
    if special:
        return special
    built_in = "." not in group or group.endswith(".k8s.io")
    if built_in and group not in _GROUP_PATH_GROUPS:
        return plural
    return f"{group}/{plural}"


@dataclass
class Report:
    counts: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    """(resource, kind, provider, key_id) -> number of values."""
    unexpected: list[tuple[str, Storage]] = field(default_factory=list)
    """Keys that do not meet the expectation (the first 1,000)."""
    total: int = 0
    empty: list[str] = field(default_factory=list)
    """Resources asked for with nothing stored under their path (none exist, or a typo)."""

    def add(self, resource: str, key: bytes, storage: Storage, expect: Expectation) -> None:
        self.total += 1
        self.counts[(resource, storage.kind, storage.provider, storage.key_id)] += 1
        if not expect.accepts(storage) and len(self.unexpected) < 1000:
            self.unexpected.append((key.decode(errors="replace"), storage))

    @property
    def ok(self) -> bool:
        return not self.unexpected and self.total > 0

    def rows(self) -> list[dict[str, object]]:
        return [
            {"resource": r, "kind": k, "provider": p, "key_id": i, "count": n}
            for (r, k, p, i), n in sorted(self.counts.items())
        ]

    def table(self) -> str:
        rows = self.rows()
        header = ("RESOURCE", "STORED AS", "PROVIDER", "KEY ID", "COUNT")
        cells = [header] + [
            (
                str(r["resource"]),
                str(r["kind"]),
                str(r["provider"]),
                str(r["key_id"]),
                str(r["count"]),
            )
            for r in rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
        verdict = "OK" if self.ok else f"FAIL: {len(self.unexpected)} unexpected value(s)"
        if self.total == 0:
            verdict = "FAIL: nothing found under the prefix"
        warnings = [
            f"warning: nothing stored for {name!r} (no such objects, or not a resource name "
            "as in an EncryptionConfiguration, e.g. secrets or deployments.apps)"
            for name in self.empty
        ]
        return "\n".join([*lines, "", *warnings, f"{self.total} value(s) checked: {verdict}"])


def resource_of(key: bytes, prefix: bytes) -> str:
    """The resource part of an etcd key, as stored.

    `/registry/secrets/ns/name` gives `secrets`, `/registry/apps/deployments/ns/name` gives
    `apps/deployments` (namespaced objects of named groups have four path parts).
    """
    parts = key[len(prefix) :].lstrip(b"/").split(b"/")
    if len(parts) >= 4:  # group/resource/namespace/name
        return f"{parts[0].decode(errors='replace')}/{parts[1].decode(errors='replace')}"
    return parts[0].decode(errors="replace")


def verify(
    values: Iterable[tuple[bytes, bytes]],
    *,
    prefix: bytes,
    resources: Sequence[str],
    expect: Expectation,
) -> Report:
    report = Report()
    for key, value in values:
        resource = resource_of(key, prefix)
        if resources and resource not in resources:
            continue
        report.add(resource, key, classify(value), expect)
    return report


def verify_etcd(
    reader: EtcdReader, *, prefix: str, resources: Sequence[str], expect: Expectation
) -> Report:
    """Check each resource's values (every value under `prefix` if none is named),
    reading only the etcd paths the named resources are stored under."""
    base = prefix.rstrip("/").encode()
    if not resources:
        return verify(reader.scan(base + b"/"), prefix=base, resources=(), expect=expect)
    report = Report()
    for name in dict.fromkeys(resources):
        path = base + b"/" + storage_path(name).encode() + b"/"
        before = report.total
        for key, value in reader.scan(path):
            report.add(name, key, classify(value), expect)
        if report.total == before:
            report.empty.append(name)
    return report
