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


@dataclass
class Report:
    counts: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    """(resource, kind, provider, key_id) -> number of values."""
    unexpected: list[tuple[str, Storage]] = field(default_factory=list)
    """Keys that do not meet the expectation (the first 1,000)."""
    total: int = 0

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
        return "\n".join([*lines, "", f"{self.total} value(s) checked: {verdict}"])


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
        storage = classify(value)
        report.total += 1
        report.counts[(resource, storage.kind, storage.provider, storage.key_id)] += 1
        if not expect.accepts(storage) and len(report.unexpected) < 1000:
            report.unexpected.append((key.decode(errors="replace"), storage))
    return report


def verify_etcd(
    reader: EtcdReader, *, prefix: str, resources: Sequence[str], expect: Expectation
) -> Report:
    base = prefix.rstrip("/").encode()
    scans: Iterable[tuple[bytes, bytes]]
    if resources and all("/" not in r for r in resources):
        # Core-group resources live at <prefix>/<resource>/: scan only those.
        scans = (kv for r in resources for kv in reader.scan(base + b"/" + r.encode() + b"/"))
    else:
        scans = reader.scan(base + b"/")
    return verify(scans, prefix=base, resources=resources, expect=expect)
