"""`kmsplug migrate`: rewrite stored objects so they use the current write provider and key.

The documented way to re-encrypt is to read every object and write it back unchanged.
kube-apiserver only rewrites a value in etcd when its storage is stale (read through a
non-primary provider, or an old KMS v2 key_id), so an unchanged replace is exactly a
re-encryption. Done properly: paginated lists, optimistic-concurrency retries on 409,
a state file so a second run resumes where the first stopped, and a dry run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 8


@dataclass
class MigrationState:
    """Per resource, the last object done ("namespace/name"); objects list in key order."""

    path: Path | None
    done: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> MigrationState:
        if path is None or not path.exists():
            return cls(path)
        return cls(path, dict(json.loads(path.read_text())))

    def mark(self, resource: str, object_key: str) -> None:
        self.done[resource] = object_key

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.done, indent=1))
            tmp.replace(self.path)


@dataclass
class MigrationResult:
    rewritten: int = 0
    skipped: int = 0
    """Already done in an earlier run (resume)."""
    gone: int = 0
    """Deleted between list and write."""
    conflicts: int = 0
    """409 answers retried."""


def object_key(item: Any) -> str:
    meta = item["metadata"]
    return f"{meta.get('namespace') or ''}/{meta['name']}"


class Migrator:
    def __init__(
        self,
        kubeconfig: str | None = None,
        *,
        page_size: int = 500,
        dry_run: bool = False,
        state: MigrationState | None = None,
        on_progress: Callable[[str, int, int | None], None] | None = None,
    ) -> None:
        api_client = k8s_config.new_client_from_config(config_file=kubeconfig)
        self.client = DynamicClient(api_client)
        self.page_size = page_size
        self.dry_run = dry_run
        self.state = state or MigrationState(None)
        self.on_progress = on_progress

    def resource(self, name: str) -> Any:
        """`secrets`, `configmaps`, or `<plural>.<group>` such as `deployments.apps`."""
        plural, _, group = name.partition(".")
        found = [
            r
            for r in self.client.resources.search(name=plural)
            if (r.group or "") == group and "/" not in r.name
        ]
        if not found:
            raise LookupError(f"no resource named {name!r} on this apiserver")
        preferred = [r for r in found if r.preferred] or found
        return preferred[0]

    def pages(self, resource: Any) -> Iterator[tuple[list[Any], int | None]]:
        token: str | None = None
        while True:
            page = resource.get(limit=self.page_size, _continue=token)
            remaining = page.metadata.get("remainingItemCount")
            yield page.items, remaining
            token = page.metadata.get("continue")
            if not token:
                return

    def migrate(self, name: str) -> MigrationResult:
        resource = self.resource(name)
        result = MigrationResult()
        resume_after = self.state.done.get(name, "")
        seen = 0
        for items, remaining in self.pages(resource):
            for item in items:
                seen += 1
                key = object_key(item)
                if resume_after and key <= resume_after:
                    result.skipped += 1
                    continue
                self._rewrite(resource, item, result)
                self.state.mark(name, key)
            self.state.save()
            if self.on_progress is not None:
                total = seen + remaining if remaining is not None else None
                self.on_progress(name, seen, total)
        return result

    def _rewrite(self, resource: Any, item: Any, result: MigrationResult) -> None:
        body = item.to_dict()
        meta = body["metadata"]
        kwargs: dict[str, Any] = {"dry_run": "All"} if self.dry_run else {}
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                resource.replace(body=body, namespace=meta.get("namespace"), **kwargs)
            except ApiException as exc:
                if exc.status == 404:
                    result.gone += 1
                    return
                if exc.status != 409:
                    raise
                result.conflicts += 1
                try:
                    body = resource.get(
                        name=meta["name"], namespace=meta.get("namespace")
                    ).to_dict()
                except ApiException as get_exc:
                    if get_exc.status == 404:
                        result.gone += 1
                        return
                    raise
                meta = body["metadata"]
                continue
            result.rewritten += 1
            return
        raise RuntimeError(
            f"{object_key(item)}: still conflicting after {MAX_CONFLICT_RETRIES} tries"
        )
