"""Server cost per request, A/B: kmsplug vs the empty grpc.aio server and the floor plugin.

A shared 2-core VM moves wall-clock figures by +-15 us per request between runs, so this
counts what load barely moves, for the server process only (all its threads):
- `--measure callgrind` (default): instructions executed per request, under valgrind's
  callgrind (counters zeroed before and dumped after each round; ~70x slower);
- `--measure cpu`: on-CPU time per request (the sum of /proc/PID/task/*/schedstat), the
  server pinned to CPU 0 and the client to CPU 1.

Servers (benches/empty_server.py says what the baselines do):
- empty: grpc.aio with handlers that answer fixed bytes;
- floor: the same plus what any plugin must do: one call into the Rust core per
  Encrypt or Decrypt (seal or open a DEK);
- kmsplug: `kmsplug serve` on a local key file, as users run it;
- kmsplug@REF (`--kmsplug-at REF`, repeatable): kmsplug's Python package as of git REF,
  with this tree's Rust extension (REF must not change rust/);
- `--server NAME=COMMAND` (repeatable): any other server, e.g. a variant being tried;
  leading VAR=value words set its environment (valgrind must start the server itself).
Each server gets one client process and one connection for the whole run; each round is
`--requests` calls with `--concurrency` in flight after a warm-up, the servers taken in
alternating order (A B C, C B A, ...). The medians of the rounds are reported, with the
ratios to the floor and to the empty server. JSON: bench-results/server_cost.json.

Usage: python benches/server_cost.py [--measure callgrind|cpu] [--calls v1-encrypt,...]
       [--requests N] [--rounds R] [--concurrency C] [--kmsplug-at REF]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CALLS = ("v1-encrypt", "v1-decrypt", "v2-encrypt", "v2-decrypt", "v2-status")
PIN = (os.cpu_count() or 1) >= 2
WARMUP = 50


# --- the client: one process per server, one connection, driven over stdin -------------


async def _drive(path: str) -> None:
    """Read `CALL N CONCURRENCY` lines; make N calls; answer one JSON line per command."""
    from kmsplug.client import KmsClient

    async with KmsClient(f"unix://{path}", timeout=600) as client:
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
        print(json.dumps({"ready": True}), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            call, count, concurrency = line.split()
            fn, left, errors = calls[call], int(count), 0

            async def worker(fn: Callable[[], Awaitable[object]] = fn) -> None:
                nonlocal left, errors
                while left > 0:
                    left -= 1
                    try:
                        await fn()
                    except Exception:
                        errors += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(int(concurrency))))
            elapsed = time.perf_counter() - started
            print(json.dumps({"seconds": elapsed, "errors": errors}), flush=True)


# --- the servers ---------------------------------------------------------------------


def _pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if PIN else command


@dataclass
class Server:
    name: str
    command: list[str]
    socket: Path
    work: Path
    # One hash seed for every server: dict layouts, and so instruction counts, repeat.
    env: dict[str, str] = field(default_factory=lambda: {**os.environ, "PYTHONHASHSEED": "0"})
    proc: subprocess.Popen[bytes] | None = None
    client: subprocess.Popen[str] | None = None
    dumps: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, measure: str) -> None:
        command = self.command
        if measure == "callgrind":
            out = self.work / f"{self.name}.cg"
            command = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                *command,
            ]
        log = (self.work / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(
            _pinned(0, command), stdout=log, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + 120
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log()}")
            time.sleep(0.1)
        self.client = subprocess.Popen(
            _pinned(1, [sys.executable, __file__, "client", str(self.socket)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._answer()
        if measure == "callgrind":
            self._callgrind("-i", "on")

    def log(self) -> str:
        return (self.work / f"{self.name}.log").read_text(errors="replace")[-4000:]

    def _answer(self) -> dict[str, Any]:
        assert self.client is not None and self.client.stdout is not None
        line = self.client.stdout.readline()
        if not line:
            raise RuntimeError(f"the client of {self.name} stopped:\n{self.log()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def calls(self, call: str, count: int, concurrency: int) -> dict[str, Any]:
        assert self.client is not None
        stdin: IO[str] | None = self.client.stdin
        assert stdin is not None
        stdin.write(f"{call} {count} {concurrency}\n")
        stdin.flush()
        return self._answer()

    def _callgrind(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def cost(self, measure: str, call: str, count: int, concurrency: int) -> float:
        """Instructions (callgrind) or CPU nanoseconds (cpu) per request over one round."""
        if measure == "callgrind":
            self._callgrind("-z")
            answer = self.calls(call, count, concurrency)
            self._callgrind("-d")
            self.dumps += 1
            used = float(_callgrind_total(self.work / f"{self.name}.cg.{self.dumps}"))
        else:
            before = _cpu_ns(self.pid)
            answer = self.calls(call, count, concurrency)
            used = float(_cpu_ns(self.pid) - before)
        if answer["errors"]:
            raise RuntimeError(f"{self.name}: {answer['errors']} {call} calls failed")
        return used / count

    def stop(self) -> None:
        for proc in (self.client, self.proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _callgrind_total(path: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the dump is written a moment after the command
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError(f"no callgrind totals in {path}")


def _cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of `pid` (schedstat's first field)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total


def _kmsplug_command(work: Path, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kmsplug",
        "serve",
        "--socket",
        f"unix://{work / (name + '.sock')}",
        "--key-file",
        str(work / "local.key"),
        "--http-address",
        "127.0.0.1:0",
        "--log-level",
        "warning",
    ]


def _package_at(ref: str, work: Path) -> Path:
    """kmsplug's Python package as of `ref`, with this tree's Rust extension."""
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--name-only", ref, "--", "rust"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if changed:
        raise SystemExit(f"{ref} has another Rust core ({changed.splitlines()[0]}, ...)")
    target = work / f"at-{ref.replace('/', '_')}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "python/kmsplug"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    for built in (ROOT / "python" / "kmsplug").glob("_kmsplug*.so"):
        shutil.copy2(built, target / "python" / "kmsplug" / built.name)
    return target / "python"


def _extra(work: Path, spec: str) -> Server:
    """`NAME=COMMAND`: any other server; {socket} in COMMAND is where it must listen."""
    name, _, command = spec.partition("=")
    sock = work / f"{name}.sock"
    words = shlex.split(command.replace("{socket}", str(sock)))
    server = Server(name, words, sock, work)
    while words and "=" in words[0] and not words[0].startswith(("/", ".")):
        variable, _, value = words.pop(0).partition("=")  # VAR=value: the environment's
        server.env[variable] = value
    return server


def _servers(work: Path, refs: list[str], extras: list[str]) -> list[Server]:
    empty = [sys.executable, str(HERE / "empty_server.py")]
    servers = [
        Server("empty", [*empty, str(work / "empty.sock")], work / "empty.sock", work),
        Server(
            "floor",
            [*empty, "--floor", str(work / "floor.key"), str(work / "floor.sock")],
            work / "floor.sock",
            work,
        ),
    ]
    for ref in refs:
        name = f"kmsplug@{ref}"
        server = Server(name, _kmsplug_command(work, name), work / f"{name}.sock", work)
        server.env["PYTHONPATH"] = str(_package_at(ref, work))
        servers.append(server)
    servers.extend(_extra(work, spec) for spec in extras)
    servers.append(
        Server("kmsplug", _kmsplug_command(work, "kmsplug"), work / "kmsplug.sock", work)
    )
    return servers


def _row(call: str, concurrency: int, costs: dict[str, list[float]], unit: str) -> dict[str, Any]:
    row: dict[str, Any] = {"call": call, "concurrency": concurrency, "unit": unit}
    medians = {name: statistics.median(values) for name, values in costs.items()}
    for name, values in costs.items():
        row[name] = {"median": medians[name], "rounds": values}
        if name not in ("empty", "floor"):
            row[name]["vs_floor"] = medians[name] / medians["floor"]
            row[name]["vs_empty"] = medians[name] / medians["empty"]
    return row


def _describe(row: dict[str, Any]) -> str:
    scale, unit = (1e3, "k instr") if row["unit"] == "instructions" else (1e3, "us cpu")
    parts = [f"{row['call']:<10} x{row['concurrency']:<3}"]
    for name, entry in row.items():
        if not isinstance(entry, dict):
            continue
        spread = max(entry["rounds"]) / min(entry["rounds"]) - 1
        text = f"{name} {entry['median'] / scale:7.1f} {unit} (+-{spread * 50:.1f}%)"
        if "vs_floor" in entry:
            text += f" = {entry['vs_floor']:.3f}x floor, {entry['vs_empty']:.3f}x empty"
        parts.append(text)
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", choices=("callgrind", "cpu"), default="callgrind")
    parser.add_argument("--calls", default=",".join(CALLS))
    parser.add_argument("--requests", type=int, default=0, help="per round (default by measure)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--kmsplug-at", action="append", default=[], metavar="REF")
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="another server to compare; {socket} in COMMAND is the socket path it must use",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "server_cost.json")
    parser.add_argument("--keep", action="store_true", help="keep the logs and callgrind dumps")
    args = parser.parse_args()
    calls = args.calls.split(",")
    unknown = set(calls) - set(CALLS)
    if unknown:
        parser.error(f"unknown calls: {sorted(unknown)}")
    requests = args.requests or (300 if args.measure == "callgrind" else 5000)
    unit = "instructions" if args.measure == "callgrind" else "cpu_ns"
    work = Path(tempfile.mkdtemp(prefix="kmsplug-cost-"))
    servers = _servers(work, args.kmsplug_at, args.server)
    rows = []
    try:
        for server in servers:
            server.start(args.measure)
        for call in calls:
            for server in servers:
                server.calls(call, WARMUP, args.concurrency)
            costs: dict[str, list[float]] = {server.name: [] for server in servers}
            for round_ in range(args.rounds):
                order = servers if round_ % 2 == 0 else servers[::-1]
                for server in order:
                    costs[server.name].append(
                        server.cost(args.measure, call, requests, args.concurrency)
                    )
            row = _row(call, args.concurrency, costs, unit)
            rows.append(row)
            print(_describe(row), flush=True)
    finally:
        for server in servers:
            server.stop()
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({"requests": requests, "rows": rows}, indent=2))
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        import uvloop

        uvloop.run(_drive(sys.argv[2]))
    else:
        main()
