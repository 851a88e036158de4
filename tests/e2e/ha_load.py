"""Steady, mixed API traffic through every apiserver of an HA bed, every request recorded.

Each worker owns the objects it creates (so a 404 or a conflict is never legitimate) and
sends each request to a node picked at random: create, read back, update, list, delete,
over Secrets and ConfigMaps (KMS v2 and v1 on the HA bed). A read must return exactly
what was last written, whichever node wrote it. A request fails when it gets anything
but the expected answer: an error status, no answer within 30 s, or other data.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3

OPERATIONS = (("create", 3), ("get", 4), ("update", 3), ("list", 1), ("delete", 1))
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float
    """Seconds since the load started."""
    node: str
    operation: str
    resource: str
    status: int
    """HTTP status; 0 when no answer came."""
    ms: float
    failure: str = ""
    """Why the request counts as failed ('' when it did not)."""


@dataclass
class Worker:
    number: int
    live: dict[tuple[str, str], str] = field(default_factory=dict)
    """(resource, name) -> the value last written."""
    made: int = 0


class MixedLoad:
    """`start()`, let it run, `stop()`; then `failures` and `summary()`."""

    def __init__(
        self,
        nodes: Sequence[tuple[str, str]],
        token: str,
        *,
        resources: Sequence[str] = ("secrets", "configmaps"),
        workers: int = 6,
        pause: float = 0.05,
        namespace: str = "default",
    ) -> None:
        self.nodes = list(nodes)
        """(name, server URL) of every apiserver."""
        self.resources = tuple(resources)
        self.namespace = namespace
        self.pause = pause
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.workers = workers
        self._workers = [Worker(n) for n in range(workers)]
        self._threads: list[threading.Thread] = []
        self._run_id = secrets.token_hex(3)
        self._started = 0.0
        # the apiservers' certificates are self-signed on loopback: no verification
        self._http = urllib3.PoolManager(
            maxsize=workers, cert_reqs="CERT_NONE", timeout=REQUEST_TIMEOUT, retries=False
        )
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> MixedLoad:
        self._started = time.monotonic()
        for worker in self._workers:
            thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 10)
        self._http.clear()

    def __enter__(self) -> MixedLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def now(self) -> float:
        return time.monotonic() - self._started

    # -- results -------------------------------------------------------------------------

    @property
    def failures(self) -> list[Outcome]:
        with self._lock:
            return [outcome for outcome in self.outcomes if outcome.failure]

    def count(self, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for outcome in self.outcomes if outcome.at >= since)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            outcomes = list(self.outcomes)
        by_operation = Counter(f"{o.resource} {o.operation}" for o in outcomes)
        by_node = Counter(o.node for o in outcomes)
        latencies = sorted(o.ms for o in outcomes)
        return {
            "requests": len(outcomes),
            "failed": sum(1 for o in outcomes if o.failure),
            "by_operation": dict(sorted(by_operation.items())),
            "by_node": dict(sorted(by_node.items())),
            "p50_ms": latencies[len(latencies) // 2] if latencies else None,
            "max_ms": latencies[-1] if latencies else None,
        }

    def describe_failures(self, limit: int = 20) -> str:
        return "\n".join(
            f"  t={o.at:.1f}s node {o.node} {o.resource} {o.operation}: HTTP {o.status} "
            f"after {o.ms:.0f} ms: {o.failure}"
            for o in self.failures[:limit]
        )

    # -- the work ------------------------------------------------------------------------

    def _run(self, worker: Worker) -> None:
        rng = random.Random(worker.number)
        names, weights = zip(*OPERATIONS, strict=True)
        while not self._stop.is_set():
            operation = rng.choices(names, weights)[0]
            resource = rng.choice(self.resources)
            mine = [key for key in worker.live if key[0] == resource]
            if operation in ("get", "update", "delete") and not mine:
                operation = "create"
            if operation == "delete" and len(mine) < 5:
                operation = "get"
            node, url = rng.choice(self.nodes)
            key = rng.choice(mine) if mine else (resource, "")
            self._one(worker, operation, resource, node, url, key)
            self._stop.wait(self.pause)

    def _one(
        self,
        worker: Worker,
        operation: str,
        resource: str,
        node: str,
        url: str,
        key: tuple[str, str],
    ) -> None:
        base = f"{url}/api/v1/namespaces/{self.namespace}/{resource}"
        value = f"value-{secrets.token_hex(8)}"
        expected: int = 200
        body: dict[str, Any] | None = None
        if operation == "create":
            name = f"load-{self._run_id}-{worker.number}-{worker.made}"
            worker.made += 1
            method, target, expected = "POST", base, 201
            body = self._object(resource, name, worker.number, value)
            key = (resource, name)
        elif operation == "get":
            method, target = "GET", f"{base}/{key[1]}"
        elif operation == "update":
            method, target = "PATCH", f"{base}/{key[1]}"
            body = {"data": self._data(resource, value)}
        elif operation == "list":
            selector = f"load={self._run_id}-{worker.number}"
            method, target = "GET", f"{base}?limit=50&labelSelector={selector}"
        else:
            method, target = "DELETE", f"{base}/{key[1]}"
        headers = dict(self.headers)
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        started = time.monotonic()
        status, failure, answer = 0, "", b""
        try:
            response = self._http.request(
                method, target, body=json.dumps(body) if body else None, headers=headers
            )
            status, answer = response.status, response.data
        except urllib3.exceptions.HTTPError as exc:
            failure = f"no answer: {type(exc).__name__}"
        ms = (time.monotonic() - started) * 1000
        if not failure and status != expected:
            failure = answer[:300].decode(errors="replace")
        if not failure:
            failure = self._check(worker, operation, key, value, answer)
        with self._lock:
            self.outcomes.append(
                Outcome(started - self._started, node, operation, resource, status, ms, failure)
            )

    def _check(
        self, worker: Worker, operation: str, key: tuple[str, str], value: str, answer: bytes
    ) -> str:
        """Track what was written; a read must return exactly that."""
        if operation in ("create", "update"):
            worker.live[key] = value
        elif operation == "delete":
            worker.live.pop(key, None)
        elif operation == "get":
            data = json.loads(answer).get("data") or {}
            got = data.get("v", "")
            if key[0] == "secrets":
                got = base64.b64decode(got).decode(errors="replace")
            if got != worker.live[key]:
                return "read other data than was last written"
        return ""

    @staticmethod
    def _data(resource: str, value: str) -> dict[str, str]:
        if resource == "secrets":
            return {"v": base64.b64encode(value.encode()).decode()}
        return {"v": value}

    def _object(self, resource: str, name: str, worker: int, value: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret" if resource == "secrets" else "ConfigMap",
            "metadata": {"name": name, "labels": {"load": f"{self._run_id}-{worker}"}},
            "data": self._data(resource, value),
        }
