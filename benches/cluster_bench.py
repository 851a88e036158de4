"""API-server latency with each encryption provider, and kmsplug beside a peer plugin.

Cluster level: for each case a fresh etcd + kube-apiserver (tests/e2e/bed.py, data on
tmpfs) with one EncryptionConfiguration:
  identity (no encryption), aesgcm (a local key: the floor), kmsplug-v2, kmsplug-v1,
  peer-v1, peer-v2 (the stand-in of tests/aws/peer.py: built like aws-encryption-provider,
  whose own module the Go module proxy here refuses),
where kmsplug (its AWS provider) and the peer talk to the same local-kms emulator through
one latency proxy that adds --delay-ms to every KMS call and counts the calls.
Each case: create / update / get phases with --clients concurrent clients, a warm LIST,
a fill up to --secrets Secrets, then an apiserver restart and a cold LIST of them all.

Plugin level: `kmsplug bench` workloads straight at both plugin sockets (same proxy).

Cases and plugin runs alternate their order between rounds; medians over rounds are
reported as ratios (against aesgcm, and kmsplug against the peer).

Usage: python benches/cluster_bench.py [--delay-ms 5 --delay-ms 20] [--rounds 2]
         [--secrets 10000] [--clients 16] [--seconds 10] [--out bench-results/cluster]
Writes cluster.json, report.md and PNG plots into --out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(HERE)]

from apiserver_load import ListFailed, SecretLoad  # noqa: E402

from kmsplug.bench.engine import Plan, run  # noqa: E402
from kmsplug.encryption_config import encryption_configuration  # noqa: E402
from kmsplug.endpoint import Endpoint  # noqa: E402

from aws.emulator import CREDENTIALS, REGION, LocalKms  # noqa: E402
from aws.latency_proxy import LatencyProxy  # noqa: E402
from aws.peer import PeerPlugin  # noqa: E402
from bed import ClusterBed, apiserver_binary, etcd_binary  # noqa: E402
from plugin_process import PluginProcess  # noqa: E402

STATIC_CASES = ("identity", "aesgcm")
KMS_CASES = ("kmsplug-v2", "kmsplug-v1", "peer-v1", "peer-v2")
PLUGIN_RUNS = (
    ("v1-write", 1),
    ("v1-write", 16),
    ("v1-write", 64),
    ("v1-cold", 16),
    ("v2-cold", 16),
)
V1_CACHESIZE = 1000  # the apiserver's default for KMS v1 providers
LIST_PAGE = 500  # kubectl's page size
T = TypeVar("T")


@dataclass
class Settings:
    secrets: int
    clients: int
    seconds: float
    writes: int
    plugin_seconds: float
    plugin_stored: int
    workdir: Path


class ProxyCalls:
    """The proxy's count of KMS calls, as `kmsplug.bench` reads remote calls (no proxy:
    a case without a KMS, always 0)."""

    def __init__(self, proxy: LatencyProxy | None) -> None:
        self.proxy = proxy

    def read(self) -> int:
        return sum(self.proxy.counts().values()) if self.proxy else 0

    def during(self, work: Callable[[], T]) -> tuple[T, int]:
        """Run `work`; its result and the KMS calls made meanwhile."""
        before = self.read()
        value = work()
        return value, self.read() - before


@dataclass
class KmsSide:
    """local-kms, the latency proxy in front of it, and both plugins reaching it through it."""

    delay_ms: float
    proxy: LatencyProxy
    kmsplug: PluginProcess
    peer: PeerPlugin

    def socket(self, plugin: str) -> Endpoint:
        if plugin == "kmsplug":
            return self.kmsplug.endpoint
        endpoint: Endpoint = self.peer.endpoint
        return endpoint


@contextmanager
def kms_side(delay_ms: float, workdir: Path) -> Iterator[KmsSide]:
    workdir.mkdir(parents=True, exist_ok=True)
    kms = LocalKms(workdir).start()
    proxy: LatencyProxy | None = None
    kmsplug: PluginProcess | None = None
    peer: PeerPlugin | None = None
    try:
        arn = kms.client().create_key(Description="kmsplug bench")["KeyMetadata"]["Arn"]
        proxy = LatencyProxy(kms.endpoint, delay_ms=delay_ms).start()
        kmsplug = PluginProcess(
            endpoint=Endpoint(path=str(workdir / "kmsplug.sock")),
            key_file=workdir / "unused-local.key",
            args=["--provider", "aws"],
            log_path=workdir / "kmsplug.log",
            env={
                **CREDENTIALS,
                "AWS_REGION": REGION,
                "KMSPLUG_AWS_KEY": arn,
                "KMSPLUG_AWS_ENDPOINT": proxy.url,
            },
        ).start()
        peer = PeerPlugin(workdir / "peer", proxy.url, arn).start()
        yield KmsSide(delay_ms, proxy, kmsplug, peer)
    finally:
        for stop in (peer and peer.stop, kmsplug and kmsplug.terminate, proxy and proxy.stop):
            if stop:
                stop()
        kms.stop()


def encryption_config(case: str, side: KmsSide | None, path: Path) -> Path:
    if case in STATIC_CASES:
        providers: list[dict[str, Any]] = [{"identity": {}}]
        if case == "aesgcm":
            key = base64.b64encode(secrets.token_bytes(32)).decode()
            providers.insert(0, {"aesgcm": {"keys": [{"name": "k1", "secret": key}]}})
        document: dict[str, Any] = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [{"resources": ["secrets"], "providers": providers}],
        }
    else:
        assert side is not None
        plugin, api = case.split("-")
        document = encryption_configuration(
            side.socket(plugin),
            api=api,
            name=plugin,
            cachesize=V1_CACHESIZE if api == "v1" else None,
        )
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_case(case: str, side: KmsSide | None, settings: Settings) -> dict[str, Any]:
    """One case on a fresh etcd + apiserver; every figure the report needs."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{case}-", dir=settings.workdir))
    config = encryption_config(case, side, workdir / "encryption.yaml")
    calls = ProxyCalls(side.proxy if side else None)
    bed = ClusterBed(workdir / "bed").start(config, feature_gates=("KMSv1=true",))
    print(f"  {case}: apiserver up", flush=True)
    try:
        load = SecretLoad(bed.server_url, bed.token)
        anyio.run(load.ensure_namespace)
        out: dict[str, Any] = {"case": case, "delay_ms": side.delay_ms if side else None}
        remote: dict[str, int] = {}

        def phase(name: str, go: Any, *args: Any) -> None:
            result, remote[name] = calls.during(lambda: anyio.run(go, *args))
            out[name] = result.summary()
            if name == "create1":  # the latency CDF plot
                out["create1_latencies_ms"] = result.latencies_ms

        # one writer: latency without queueing; then --clients writers: under load
        phase("create1", load.create, 1, settings.writes, settings.seconds / 2)
        phase("create", load.create, settings.clients, settings.writes, settings.seconds)
        phase("update", load.update, settings.clients, settings.writes, settings.seconds)
        phase("get", load.get, settings.clients, settings.writes * 4, settings.seconds)
        out["warm_list_ms"], _ = anyio.run(load.list_all, LIST_PAGE)
        phase("fill", load.create, 32, settings.secrets - load.created, 900.0)
        out["stored"] = load.created
        writes_calls = remote["create1"] + remote["create"] + remote["fill"]
        out["remote_calls_per_10k_writes"] = writes_calls * 10_000 / max(1, load.created)

        def cold_start() -> int:
            bed.stop_apiserver()
            log_mark = (bed.workdir / "apiserver.log").stat().st_size
            started = time.monotonic()
            bed.start_apiserver(timeout=900)
            out["restart_ready_s"] = time.monotonic() - started
            out["cold_list_ms"], listed = anyio.run(load.list_all, LIST_PAGE)
            out["restart_to_list_s"] = time.monotonic() - started
            out["cache_init_s"] = secrets_cache_init(bed.workdir / "apiserver.log", log_mark)
            return listed

        def unpaged_list() -> None:  # every Secret in one request, under the 60 s timeout
            try:
                out["unpaged_list_ms"], _ = anyio.run(load.list_all, 0)
            except ListFailed as exc:
                out["unpaged_list_ms"], out["unpaged_list_error"] = None, f"HTTP {exc.status}"

        listed, remote["cold_start"] = calls.during(cold_start)
        out["cold_listed"] = listed
        _, remote["unpaged_list"] = calls.during(unpaged_list)
        out["remote_calls"] = remote
        print(
            f"  {case}: create p99 {out['create']['p99_ms']:.1f} ms, "
            f"cold LIST of {listed} {out['cold_list_ms'] / 1000:.1f} s, remote {remote}",
            flush=True,
        )
        return out
    finally:
        bed.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def secrets_cache_init(log: Path, offset: int, wait: float = 600) -> float | None:
    """Seconds the restarted apiserver took to fill its Secrets watch cache (each Secret
    decrypted once), from its own log line; None if it did not finish within `wait`."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with log.open("rb") as handle:
            handle.seek(offset)
            for line in handle.read().decode(errors="replace").splitlines():
                if '"cacher initialized"' in line and 'resource="secrets"' in line:
                    found = re.search(r'duration="([^"]+)"', line)
                    return go_duration(found.group(1)) if found else None
        time.sleep(0.5)
    return None


def go_duration(text: str) -> float:
    """Seconds in a Go time.Duration string such as 1m2.5s, 8.87s or 950.2µs."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([0-9.]+)(h|ms|m|s|us|µs|ns)", text)
    if not parts:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def run_plugin_level(
    side: KmsSide, settings: Settings, order: tuple[str, str]
) -> list[dict[str, Any]]:
    rows = []
    for workload, concurrency in PLUGIN_RUNS:
        for plugin in order:
            plan = Plan(
                workload,
                concurrency,
                settings.plugin_seconds,
                stored=settings.plugin_stored,
                max_requests=200_000,
            )
            result = anyio.run(run, side.socket(plugin), plan, None, ProxyCalls(side.proxy))
            row = result.summary() | {"plugin": plugin, "delay_ms": side.delay_ms}
            print(
                f"  plugin {plugin} {workload} x{concurrency}: {result.rps:.0f} req/s, "
                f"p99 {row['p99_ms']} ms, remote {result.remote_calls}",
                flush=True,
            )
            rows.append(row)
    return rows


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    apiserver = subprocess.run(
        [str(apiserver_binary()), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    etcd = subprocess.run(
        [str(etcd_binary()), "--version"], capture_output=True, text=True, check=False
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kube-apiserver": apiserver,
        "etcd": etcd.stdout.splitlines()[0] if etcd.stdout else "?",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, action="append", default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--secrets", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--writes", type=int, default=3_000, help="cap per phase")
    parser.add_argument("--plugin-seconds", type=float, default=5.0)
    parser.add_argument("--plugin-stored", type=int, default=1_000)
    parser.add_argument("--cases", default=",".join(STATIC_CASES + KMS_CASES))
    parser.add_argument("--skip-plugin-level", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "cluster")
    args = parser.parse_args()
    delays = args.delay_ms or [5.0]
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(STATIC_CASES + KMS_CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # etcd on tmpfs: less noise
    workdir = Path(tempfile.mkdtemp(prefix="kmsplug-cluster-bench-", dir=shm))
    settings = Settings(
        args.secrets,
        args.clients,
        args.seconds,
        args.writes,
        args.plugin_seconds,
        args.plugin_stored,
        workdir,
    )
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": vars(args) | {"out": str(args.out)},
    }
    results["cases"], results["plugin"] = [], []
    try:
        for round_no in range(args.rounds):
            forward = round_no % 2 == 0
            print(f"round {round_no + 1}/{args.rounds}", flush=True)
            static = [c for c in STATIC_CASES if c in cases]
            for case in static if forward else static[::-1]:
                results["cases"].append(run_case(case, None, settings) | {"round": round_no})
            kms_cases = [c for c in KMS_CASES if c in cases]
            for delay in delays:
                with kms_side(delay, workdir / f"kms-{delay:g}ms-{round_no}") as side:
                    for case in kms_cases if forward else kms_cases[::-1]:
                        results["cases"].append(
                            run_case(case, side, settings) | {"round": round_no}
                        )
                    if not args.skip_plugin_level:
                        order = ("kmsplug", "peer") if forward else ("peer", "kmsplug")
                        for row in run_plugin_level(side, settings, order):
                            results["plugin"].append(row | {"round": round_no})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (args.out / "cluster.json").write_text(json.dumps(results, indent=1))
    from cluster_report import render, write_plots

    report = render(results)
    (args.out / "report.md").write_text(report)
    for path in write_plots(results, args.out):
        print(f"wrote {path}")
    print(report)


if __name__ == "__main__":
    main()
