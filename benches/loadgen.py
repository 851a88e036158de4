"""Closed-loop load against a KMS plugin socket: N calls in flight for a fixed time.

Usage: loadgen.py SOCKET_PATH CALL CONCURRENCY SECONDS  -> one JSON line on stdout
CALL is v1-encrypt, v1-decrypt, v2-encrypt, v2-decrypt or v2-status. Decrypt replays one
ciphertext made before the clock starts (what an apiserver cache miss looks like).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable

import uvloop

from kmsplug.client import KmsClient


async def run(path: str, call: str, concurrency: int, seconds: float) -> dict[str, object]:
    async with KmsClient(f"unix://{path}", timeout=10) as client:
        await client.v1_version()
        dek = secrets.token_bytes(32)
        v1_cipher = await client.v1_encrypt(dek)
        v2_sealed = await client.v2_encrypt(dek)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "v1-encrypt": lambda: client.v1_encrypt(dek),
            "v1-decrypt": lambda: client.v1_decrypt(v1_cipher),
            "v2-encrypt": lambda: client.v2_encrypt(dek),
            "v2-decrypt": lambda: client.v2_decrypt(v2_sealed.ciphertext, v2_sealed.key_id),
            "v2-status": lambda: client.v2_status(),
        }
        fn = calls[call]
        latencies: list[float] = []
        errors = 0
        warmup_end = time.perf_counter() + min(0.5, seconds / 4)
        end = warmup_end + seconds

        async def worker() -> None:
            nonlocal errors
            while True:
                start = time.perf_counter()
                if start >= end:
                    return
                try:
                    await fn()
                except Exception:
                    errors += 1
                done = time.perf_counter()
                if start >= warmup_end:
                    latencies.append(done - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6

    return {
        "call": call,
        "concurrency": concurrency,
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "errors": errors,
    }


if __name__ == "__main__":
    path, call, concurrency, seconds = sys.argv[1:5]
    result = uvloop.run(run(path, call, int(concurrency), float(seconds)))
    print(json.dumps(result))
