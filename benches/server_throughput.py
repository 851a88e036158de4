"""kmsplug through the full server vs an empty-handler grpc.aio server, in one run.

Both servers run pinned to CPU 0 and the load generator to CPU 1 (when there are two
CPUs). Runs alternate A/B for each (call, concurrency) and the median of the rounds is
reported, with the server CPU time per request beside req/s: this VM has stalls that
move req/s, while CPU per request stays steady. Results: bench-results/server.json.

Usage: python benches/server_throughput.py [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIN = os.cpu_count() is not None and (os.cpu_count() or 1) >= 2

CASES = [
    ("v1-encrypt", 1),
    ("v1-encrypt", 16),
    ("v1-encrypt", 64),
    ("v2-decrypt", 1),
    ("v2-decrypt", 16),
    ("v2-decrypt", 64),
    ("v2-status", 1),
    ("v2-status", 16),
]


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if PIN else command


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start(command: list[str], sock: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(pinned(0, command), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sock.exists() and "serving on" in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(log.read_text())


def measure(proc: subprocess.Popen[bytes], sock: Path, call: str, conc: int, secs: float) -> dict:
    before = cpu_seconds(proc.pid)
    out = subprocess.run(
        pinned(
            1, [sys.executable, str(HERE / "loadgen.py"), str(sock), call, str(conc), str(secs)]
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=secs + 60,
    )
    result = json.loads(out.stdout)
    used = cpu_seconds(proc.pid) - before
    total = result["requests"] + 1
    result["server_cpu_us_per_req"] = used / total * 1e6
    return result


def summarise(call: str, conc: int, runs: dict[str, list[dict]]) -> dict:
    """Medians per server, and kmsplug's ratios to the empty server."""
    row: dict = {"call": call, "concurrency": conc}
    for name, results in runs.items():
        for key in ("rps", "p50_us", "p99_us", "server_cpu_us_per_req"):
            row[f"{name}_{key}"] = statistics.median(r[key] for r in results)
        row[f"{name}_errors"] = sum(r["errors"] for r in results)
    row["rps_ratio"] = row["kmsplug_rps"] / row["empty_rps"]
    row["cpu_ratio"] = row["kmsplug_server_cpu_us_per_req"] / row["empty_server_cpu_us_per_req"]
    return row


def describe(row: dict) -> str:
    parts = [f"{row['call']:<11} x{row['concurrency']:<3}"]
    for name in ("empty", "kmsplug"):
        parts.append(
            f"{name} {row[f'{name}_rps']:7.0f} req/s "
            f"cpu {row[f'{name}_server_cpu_us_per_req']:4.0f} us/req "
            f"p99 {row[f'{name}_p99_us']:6.0f} us"
        )
    parts.append(f"ratio {row['rps_ratio']:.2f}x req/s, {row['cpu_ratio']:.2f}x cpu/req")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kmsplug-bench-"))
    servers = {
        "empty": (
            [sys.executable, str(HERE / "empty_server.py"), str(work / "empty.sock")],
            work / "empty.sock",
        ),
        "kmsplug": (
            [
                sys.executable,
                "-m",
                "kmsplug",
                "serve",
                "--socket",
                f"unix://{work / 'kmsplug.sock'}",
                "--key-file",
                str(work / "local.key"),
                "--log-level",
                "warning",
            ],
            work / "kmsplug.sock",
        ),
    }
    procs = {name: start(cmd, sock, work / f"{name}.log") for name, (cmd, sock) in servers.items()}
    rows = []
    try:
        for call, conc in CASES:
            runs: dict[str, list[dict]] = {"empty": [], "kmsplug": []}
            for _ in range(args.rounds):
                for name in ("empty", "kmsplug"):
                    runs[name].append(
                        measure(procs[name], servers[name][1], call, conc, args.seconds)
                    )
            row = summarise(call, conc, runs)
            rows.append(row)
            print(describe(row), flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "server.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out_dir / 'server.json'}")


if __name__ == "__main__":
    main()
