"""Secret traffic against a kube-apiserver's REST API, each request timed.

Phases (create, update, get) run `clients` concurrent loops over one keep-alive aiohttp
session; every phase is bounded by a request count and a deadline. LIST is timed on its
own: it is what an apiserver restart makes slow when every Secret needs a KMS call.
Results reuse `kmsplug.bench.Result`, so percentiles and tables match `kmsplug bench`.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import anyio

from kmsplug.bench.engine import Result

MERGE_PATCH = "application/merge-patch+json"


class ListFailed(RuntimeError):
    """The apiserver answered a LIST with an error (e.g. 504 after its request timeout)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"LIST: HTTP {status} {body[:300]!r}")
        self.status = status


class SecretLoad:
    """Creates, patches, reads and lists Secrets named `bench-<n>` in one namespace."""

    def __init__(
        self, server_url: str, token: str, namespace: str = "bench", payload_bytes: int = 256
    ) -> None:
        self.base = f"{server_url}/api/v1/namespaces/{namespace}/secrets"
        self.server_url = server_url
        self.namespace = namespace
        self.payload_bytes = payload_bytes
        self.headers = {"Authorization": f"Bearer {token}"}
        self.created = 0  # names bench-0 .. bench-(created-1) exist
        # the apiserver's certificate is self-signed on loopback: no verification
        self._ssl = ssl.create_default_context()
        self._ssl.check_hostname = False
        self._ssl.verify_mode = ssl.CERT_NONE

    def _session(self, clients: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            headers=self.headers,
            connector=aiohttp.TCPConnector(limit=clients, ssl=self._ssl),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    def _data(self) -> dict[str, str]:
        """A Secret's data: `payload_bytes` random bytes, base64 as the API wants."""
        return {"v": base64.b64encode(secrets.token_bytes(self.payload_bytes)).decode()}

    def _secret(self, name: str) -> bytes:
        return json.dumps(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": self._data()}
        ).encode()

    async def ensure_namespace(self) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        async with (
            self._session(1) as session,
            session.post(f"{self.server_url}/api/v1/namespaces", json=body) as response,
        ):
            if response.status not in (201, 409):
                raise RuntimeError(f"namespace: HTTP {response.status} {await response.text()}")

    async def create(self, clients: int, count: int, seconds: float) -> Result:
        """Create up to `count` new Secrets within `seconds`."""
        names = itertools.count(self.created)  # the phase's budget bounds how many are taken

        async def one(session: aiohttp.ClientSession) -> int:
            n = next(names)
            body = self._secret(f"bench-{n}")
            json_type = {"Content-Type": "application/json"}
            async with session.post(self.base, data=body, headers=json_type) as response:
                await response.read()
                if response.status == 201:
                    self.created = max(self.created, n + 1)
                return response.status

        return await self._phase("create", clients, count, seconds, one)

    async def update(self, clients: int, count: int, seconds: float) -> Result:
        """Patch the data of random existing Secrets (each patch re-encrypts)."""
        self._need_secrets()

        async def one(session: aiohttp.ClientSession) -> int:
            name = f"bench-{secrets.randbelow(self.created)}"
            async with session.patch(
                f"{self.base}/{name}",
                data=json.dumps({"data": self._data()}).encode(),
                headers={"Content-Type": MERGE_PATCH},
            ) as response:
                await response.read()
                return response.status

        return await self._phase("update", clients, count, seconds, one)

    async def get(self, clients: int, count: int, seconds: float) -> Result:
        """GET random existing Secrets (served from the apiserver's watch cache or etcd)."""
        self._need_secrets()

        async def one(session: aiohttp.ClientSession) -> int:
            name = f"bench-{secrets.randbelow(self.created)}"
            async with session.get(f"{self.base}/{name}") as response:
                await response.read()
                return response.status

        return await self._phase("get", clients, count, seconds, one)

    async def list_all(self, page: int = 0) -> tuple[float, int]:
        """LIST the namespace: (milliseconds, Secrets returned).

        page=0: one unpaginated LIST; page=N: pages of N following `continue`, as
        `kubectl get secrets` does (each page is one request under the apiserver's timeout).
        """
        items = 0
        token = ""
        async with self._session(1) as session:
            t0 = time.perf_counter()
            while True:
                params = {"limit": str(page), "continue": token} if page else {}
                async with session.get(
                    self.base, params=params, timeout=aiohttp.ClientTimeout(total=900)
                ) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise ListFailed(response.status, body)
                listed = json.loads(body)
                items += len(listed["items"])
                token = listed["metadata"].get("continue", "")
                if not token:
                    return (time.perf_counter() - t0) * 1000, items

    def _need_secrets(self) -> None:
        if self.created == 0:
            raise RuntimeError("create Secrets first")

    async def _phase(
        self,
        name: str,
        clients: int,
        count: int,
        seconds: float,
        one: Callable[[aiohttp.ClientSession], Awaitable[int]],
    ) -> Result:
        result = Result(name, clients, 0.0)
        errors: Counter[str] = Counter()
        started = time.monotonic()
        end = started + seconds
        budget = itertools.count()

        async def client(session: aiohttp.ClientSession) -> None:
            while time.monotonic() < end and next(budget) < count:
                t0 = time.perf_counter()
                try:
                    status = await one(session)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = -1
                    errors[type(exc).__name__] += 1
                result.requests += 1
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if status not in (200, 201, -1):
                    errors[f"HTTP {status}"] += 1

        async with self._session(clients) as session, anyio.create_task_group() as tasks:
            for _ in range(clients):
                tasks.start_soon(client, session)
        result.seconds = time.monotonic() - started
        result.errors = dict(errors)
        return result
