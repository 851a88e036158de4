"""Instructions per call of each layer of kmsplug's request path, in-process, no gRPC.

benches/server_cost.py says what kmsplug costs per request in all; this says where, to
the hundred instructions: each piece runs N times inside one Python process under
valgrind's callgrind, counters zeroed before and dumped after each piece, and the cost of
an empty coroutine call is subtracted. Pieces:
- floor-*: what benches/empty_server.py --floor does per call (decode, one Rust seal or
  open, encode);
- kmsplug-*: the servicer method as grpc calls it (raw bytes in), then encoding;
- the layers: KeyService.encrypt, Sealer.seal_now, the Rust seal, a metrics count, ...
  (a synchronous piece is called through one lambda: ~350 instructions of its figure).

Usage: python benches/layer_cost.py [PIECE ...] [--calls N]   (default: every piece)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Piece = Callable[[], Awaitable[object]]


async def _pieces(work: Path) -> dict[str, Piece]:
    from kmsplug._proto.v1beta1 import api_pb2 as v1
    from kmsplug._proto.v2 import api_pb2 as v2
    from kmsplug.metrics import Metrics
    from kmsplug.providers.local import KeyFileKek
    from kmsplug.sealer import Sealer
    from kmsplug.service import KeyService
    from kmsplug.servicers import InflightCounter, V1beta1Servicer, V2Servicer

    service = KeyService(Sealer(KeyFileKek.open(work / "local.key", create=True)))
    await service.start()
    sealer = service.sealer
    keyring = sealer._keyring  # the floor uses the same Rust keyring directly
    s1 = V1beta1Servicer(service, InflightCounter(), Metrics())
    s2 = V2Servicer(service, InflightCounter(), metrics=Metrics())
    counter = Metrics().calls("v1beta1", "Encrypt")
    dek = secrets.token_bytes(32)
    v1_cipher = (await service.encrypt(dek)).ciphertext
    v2_sealed = await service.encrypt(dek)
    raw = {
        "v1e": v1.EncryptRequest(version="v1beta1", plain=dek).SerializeToString(),
        "v1d": v1.DecryptRequest(version="v1beta1", cipher=v1_cipher).SerializeToString(),
        "v2e": v2.EncryptRequest(plaintext=dek, uid="0f1e2d3c").SerializeToString(),
        "v2d": v2.DecryptRequest(
            ciphertext=v2_sealed.ciphertext, key_id=v2_sealed.key_id, uid="0f1e2d3c"
        ).SerializeToString(),
        "v2s": v2.StatusRequest().SerializeToString(),
    }

    async def nothing() -> None:
        return None

    async def floor_v1_encrypt() -> bytes:
        request = v1.EncryptRequest.FromString(raw["v1e"])
        return v1.EncryptResponse(cipher=keyring.seal(request.plain)).SerializeToString()

    async def floor_v1_decrypt() -> bytes:
        request = v1.DecryptRequest.FromString(raw["v1d"])
        return v1.DecryptResponse(plain=keyring.open(request.cipher)).SerializeToString()

    async def floor_v2_encrypt() -> bytes:
        request = v2.EncryptRequest.FromString(raw["v2e"])
        ciphertext = keyring.seal(request.plaintext)
        response = v2.EncryptResponse(ciphertext=ciphertext, key_id=keyring.current_key_id)
        return response.SerializeToString()

    async def floor_v2_decrypt() -> bytes:
        request = v2.DecryptRequest.FromString(raw["v2d"])
        plaintext = keyring.open(request.ciphertext, request.key_id)
        return v2.DecryptResponse(plaintext=plaintext).SerializeToString()

    async def floor_v2_status() -> bytes:
        v2.StatusRequest.FromString(raw["v2s"])
        response = v2.StatusResponse(version="v2", healthz="ok", key_id=keyring.current_key_id)
        return response.SerializeToString()

    def ours(method: Any, serialize: Any, request: bytes) -> Piece:
        async def piece() -> bytes:
            return serialize(await method(request, None))  # type: ignore[no-any-return]

        return piece

    def sync(fn: Callable[[], object]) -> Piece:
        async def piece() -> object:
            return fn()

        return piece

    return {
        "nothing": nothing,
        "floor-v1-encrypt": floor_v1_encrypt,
        "kmsplug-v1-encrypt": ours(s1.Encrypt, v1.EncryptResponse.SerializeToString, raw["v1e"]),
        "floor-v1-decrypt": floor_v1_decrypt,
        "kmsplug-v1-decrypt": ours(s1.Decrypt, v1.DecryptResponse.SerializeToString, raw["v1d"]),
        "floor-v2-encrypt": floor_v2_encrypt,
        "kmsplug-v2-encrypt": ours(s2.Encrypt, v2.EncryptResponse.SerializeToString, raw["v2e"]),
        "floor-v2-decrypt": floor_v2_decrypt,
        "kmsplug-v2-decrypt": ours(s2.Decrypt, v2.DecryptResponse.SerializeToString, raw["v2d"]),
        "floor-v2-status": floor_v2_status,
        "kmsplug-v2-status": ours(s2.Status, v2.StatusResponse.SerializeToString, raw["v2s"]),
        "service.encrypt": lambda: service.encrypt(dek),
        "service.decrypt": lambda: service.decrypt(v1_cipher),
        "service.apiserver_status": sync(service.apiserver_status),
        "sealer.seal_now": sync(lambda: sealer.seal_now(dek)),
        "keyring.seal (Rust)": sync(lambda: keyring.seal(dek)),
        "keyring.open (Rust)": sync(lambda: keyring.open(v1_cipher)),
        "keyring.needs_rotation (Rust)": sync(keyring.needs_rotation),
        "CallCounter.observe": sync(lambda: counter.observe("OK", 1e-4)),
        "time.perf_counter": sync(time.perf_counter),
        "v2.EncryptResponse, empty annotations": sync(
            lambda: v2.EncryptResponse(ciphertext=v1_cipher, key_id="k", annotations={})
        ),
        "v2.EncryptResponse, no annotations": sync(
            lambda: v2.EncryptResponse(ciphertext=v1_cipher, key_id="k")
        ),
    }


async def _worker() -> None:
    """Run `PIECE N` lines from stdin; answer `done` after each."""
    with tempfile.TemporaryDirectory(prefix="kmsplug-layers-") as work:
        await _serve_pieces(await _pieces(Path(work)))


async def _serve_pieces(pieces: dict[str, Piece]) -> None:
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        name, _, count = line.rstrip("\n").rpartition(" ")
        piece = pieces[name]
        for _ in range(int(count)):
            await piece()
        print("done", flush=True)


class _Callgrind:
    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="kmsplug-layers-cg-")
        self.out = Path(self.dir.name) / "cg"
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={self.out}",
                sys.executable,
                __file__,
                "worker",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # counts that repeat between runs
        )
        self.dumps = 0
        if self._line() != "ready":
            raise RuntimeError("the worker did not start")
        self._control("-i", "on")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def _control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def instructions(self, piece: str, count: int) -> int:
        assert self.proc.stdin is not None
        self._control("-z")
        self.proc.stdin.write(f"{piece} {count}\n")
        self.proc.stdin.flush()
        if self._line() != "done":
            raise RuntimeError(f"the worker failed on {piece}")
        self._control("-d")
        self.dumps += 1
        dump = Path(f"{self.out}.{self.dumps}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # written a moment after the command returns
            if dump.exists():
                for line in dump.read_text().splitlines():
                    if line.startswith("totals:"):
                        return int(line.split()[1])
            time.sleep(0.1)
        raise RuntimeError(f"no callgrind totals in {dump}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pieces", nargs="*", help="default: every piece")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kmsplug-layers-") as work:
        every = asyncio.run(_pieces(Path(work)))
    names = args.pieces or [name for name in every if name != "nothing"]
    unknown = set(names) - set(every)
    if unknown:
        parser.error(f"unknown pieces: {sorted(unknown)}; known: {sorted(every)}")
    cg = _Callgrind()
    try:
        for name in ["nothing", *names]:
            cg.instructions(name, 200)  # warm-up
        per_call: dict[str, list[float]] = {name: [] for name in ["nothing", *names]}
        for _ in range(args.rounds):
            for name in per_call:
                per_call[name].append(cg.instructions(name, args.calls) / args.calls)
    finally:
        cg.close()
    loop_cost = statistics.median(per_call.pop("nothing"))
    print(f"{'piece':<40} instructions per call (an empty coroutine call, {loop_cost:.0f}, off)")
    for name, values in per_call.items():
        print(f"{name:<40} {statistics.median(values) - loop_cost:8.0f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        import uvloop

        uvloop.run(_worker())
    else:
        main()
