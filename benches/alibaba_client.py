"""Why the Alibaba provider runs the SDK's sync client in threads: measured, same run.

Against the local fake KMS (loopback, no latency): N Encrypt calls through (a) kmsplug's
provider (the sync client, keep-alive pool, worker threads) and (b) the SDK's own async
methods (a new HTTP session per request), at 1 and 16 in flight. Also counts the TCP
connections the fake accepted for each.

Usage: python benches/alibaba_client.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "python")]

from alibabacloud_kms20160120 import models  # noqa: E402
from alibabacloud_kms20160120.client import Client  # noqa: E402
from alibabacloud_tea_openapi.utils_models import Config  # noqa: E402
from darabonba.runtime import RuntimeOptions  # noqa: E402

from fakes.alibaba_kms import FakeAlibabaKms  # noqa: E402
from fakes.alibaba_provider import env_for, provider  # noqa: E402


def count_connections(fake: FakeAlibabaKms) -> list[int]:
    """Wrap the fake's accept path to count TCP connections (bench-only instrumentation)."""
    counter = [0]
    server = fake._server
    assert server is not None
    original = server.process_request

    def counted(request: object, address: object) -> None:
        counter[0] += 1
        original(request, address)

    server.process_request = counted  # type: ignore[method-assign]
    return counter


async def run(calls: int, concurrency: int, one: object) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def call() -> None:
        async with sem:
            await one()  # type: ignore[operator]

    start = time.perf_counter()
    await asyncio.gather(*(call() for _ in range(calls)))
    return calls / (time.perf_counter() - start)


async def main(calls: int) -> None:
    with FakeAlibabaKms(qps=1e9) as fake:
        key = fake.create_key()
        env = env_for(fake)
        ours = provider(fake, key, env)
        sdk = Client(
            Config(
                access_key_id=env["ACCESS_KEY_ID"],
                access_key_secret=env["ACCESS_KEY_SECRET"],
                endpoint=fake.host,
                protocol="http",
                region_id=fake.region,
            )
        )
        plaintext = base64.b64encode(b"k" * 32).decode()

        async def sdk_async() -> None:
            request = models.EncryptRequest(key_id=key, plaintext=plaintext)
            await sdk.encrypt_with_options_async(request, RuntimeOptions())

        connections = count_connections(fake)
        for concurrency in (1, 16):
            for name, one in (
                ("kmsplug (sync SDK in threads)", lambda: ours.wrap(b"k" * 32)),
                ("SDK async methods", sdk_async),
            ):
                await one()  # warm up
                before = connections[0]
                rate = await run(calls, concurrency, one)
                print(
                    f"{name:<32} x{concurrency:<3} {rate:7.0f} calls/s, "
                    f"{connections[0] - before:5d} new TCP connections for {calls} calls"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    asyncio.run(main(parser.parse_args().calls))
