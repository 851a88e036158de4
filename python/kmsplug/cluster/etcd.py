"""A read-only etcd v3 client over etcd's JSON gateway (`/v3/kv/range`), stdlib only.

Enough to scan a key prefix page by page; no watch, no writes. TLS client certificates
are supported for etcd servers that require them.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@dataclass(frozen=True, slots=True)
class EtcdTls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class EtcdReader:
    def __init__(self, url: str, *, tls: EtcdTls | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            tls = tls or EtcdTls()
            self._context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file:
                self._context.load_cert_chain(tls.cert_file, tls.key_file)

    def _range(self, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's etcd
            f"{self.url}/v3/kv/range",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=self.timeout, context=self._context
        ) as response:
            result: dict[str, object] = json.load(response)
            return result

    def get(self, key: bytes) -> bytes | None:
        kvs = self._range({"key": _b64(key)}).get("kvs") or []
        assert isinstance(kvs, list)
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def scan(self, prefix: bytes, page_size: int = 500) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for every key under `prefix`, in key order, page by page."""
        start, end = prefix, prefix_end(prefix)
        while True:
            page = self._range({"key": _b64(start), "range_end": _b64(end), "limit": page_size})
            kvs = page.get("kvs") or []
            assert isinstance(kvs, list)
            for kv in kvs:
                yield base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))
            if not page.get("more") or not kvs:
                return
            start = base64.b64decode(kvs[-1]["key"]) + b"\0"
