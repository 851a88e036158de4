"""API-server latency with each encryption provider, and kmsplug beside the real peers.

Cluster level: for each case a fresh etcd + kube-apiserver (tests/e2e/bed.py, data on
tmpfs) with one EncryptionConfiguration:
  identity (no encryption), aesgcm (a local key: the floor),
  kmsplug-v2, kmsplug-v1 (its AWS provider) and peer-v1, peer-v2 (the real
  aws-encryption-provider, built from its pinned source by tests/peers/build-peer.sh),
  both on the same local-kms emulator through one latency proxy;
  vault-kmsplug-v2, vault-kmsplug-v1 (its Vault provider) and vault-peer-v1,
  vault-peer-v2 (the real vault-kubernetes-kms), both on the same OpenBao through a
  latency proxy of the same kind.
The proxies add --delay-ms to every KMS call and count the calls. With --quota-qps the
AWS cases also run once more at the largest delay behind a proxy that enforces that KMS
quota (Alibaba's shared gateway allows ~1,000 QPS per account and region): over it, the
KMS's own throttling answer.
Each case: create / update / get phases with --clients concurrent clients, a warm LIST,
a fill up to --secrets Secrets, then an apiserver restart and a cold LIST of them all.

Plugin level: `kmsplug bench` workloads (kmsplug.bench.run, what the command runs)
straight at the kmsplug and peer sockets of each KMS (same proxy).

Cases and plugin runs alternate their order between rounds; medians over rounds are
reported as ratios (against aesgcm, and kmsplug against the peer).

Usage: python benches/cluster_bench.py [--delay-ms 5 --delay-ms 20] [--rounds 2]
         [--quota-qps 1000] [--secrets 10000] [--clients 16] [--seconds 10]
         [--cases identity,aesgcm,...] [--out bench-results/cluster]
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(HERE)]

from apiserver_load import ListFailed, SecretLoad  # noqa: E402
from peers.runners import (  # noqa: E402
    Daemon,
    aws_encryption_provider,
    kmsplug_serve,
    pinned_sources,
    vault_kubernetes_kms,
)

from kmsplug.bench.engine import Plan, run  # noqa: E402
from kmsplug.encryption_config import encryption_configuration  # noqa: E402
from kmsplug.endpoint import Endpoint  # noqa: E402

from aws.emulator import CREDENTIALS, REGION, LocalKms  # noqa: E402
from aws.latency_proxy import LatencyProxy  # noqa: E402
from bed import ClusterBed, apiserver_binary, etcd_binary  # noqa: E402
from vault.devserver import transit_server  # noqa: E402

STATIC_CASES = ("identity", "aesgcm")
AWS_CASES = ("kmsplug-v2", "kmsplug-v1", "peer-v1", "peer-v2")
VAULT_CASES = ("vault-kmsplug-v2", "vault-kmsplug-v1", "vault-peer-v1", "vault-peer-v2")
KMS_CASES = AWS_CASES + VAULT_CASES
PEERS = {"aws": "aws-encryption-provider", "vault": "vault-kubernetes-kms"}
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
    """One KMS (local-kms or OpenBao), the latency proxy in front of it, and kmsplug and
    the real peer plugin both reaching it through that proxy."""

    family: str  # "aws" or "vault"
    delay_ms: float
    quota_qps: float | None
    proxy: LatencyProxy
    kmsplug: Daemon
    peer: Daemon

    @property
    def condition(self) -> str:
        """The KMS as the report names it: its delay, and its quota if any."""
        quota = f" + {self.quota_qps:g} QPS quota" if self.quota_qps else ""
        return f"{self.delay_ms:g} ms{quota}"

    def socket(self, plugin: str) -> Endpoint:
        """`kmsplug` or `peer`, with or without the family's `vault-` prefix."""
        daemon = self.kmsplug if plugin.removeprefix("vault-") == "kmsplug" else self.peer
        return daemon.endpoint


@contextmanager
def kms_side(
    family: str, delay_ms: float, workdir: Path, quota_qps: float | None = None
) -> Iterator[KmsSide]:
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if family == "aws":
            kms = LocalKms(workdir).start()
            stack.callback(kms.stop)
            upstream = kms.endpoint
            arn = kms.client().create_key(Description="kmsplug bench")["KeyMetadata"]["Arn"]
        else:
            bao = stack.enter_context(transit_server(workdir / "bao", key="kms"))
            upstream = bao.address
        proxy = LatencyProxy(upstream, delay_ms=delay_ms, quota_qps=quota_qps).start()
        stack.callback(proxy.stop)
        if family == "aws":
            kmsplug = kmsplug_serve(
                workdir, workdir / "kmsplug.sock",
                *("--provider", "aws", "--aws-key", arn, "--aws-endpoint", proxy.url),
                *("--aws-region", REGION),
                env=CREDENTIALS,
            )  # fmt: skip
            peer = aws_encryption_provider(
                workdir, workdir / "peer.sock", kms_endpoint=proxy.url, key=arn,
                region=REGION, credentials=CREDENTIALS,
            )  # fmt: skip
        else:
            kmsplug = kmsplug_serve(
                workdir, workdir / "kmsplug.sock",
                *("--provider", "vault", "--vault-address", proxy.url),
                *("--vault-transit-key", "kms"),
                env={"VAULT_TOKEN": bao.root_token},
            )  # fmt: skip
            peer = vault_kubernetes_kms(
                workdir, workdir / "peer.sock", address=proxy.url, token=bao.root_token,
                transit_key="kms",
            )  # fmt: skip
        for daemon in (kmsplug, peer):
            stack.callback(daemon.stop)
            daemon.start(timeout=120)
        yield KmsSide(family, delay_ms, quota_qps, proxy, kmsplug, peer)


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
        plugin, api = case.rsplit("-", 1)
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
        out: dict[str, Any] = {
            "case": case,
            "delay_ms": side.delay_ms if side else None,
            "quota_qps": side.quota_qps if side else None,
            "kms": side.condition if side else None,
        }
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
    """`kmsplug bench`'s workloads at kmsplug's socket and the peer's, alternating."""
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
            name = plugin if side.family == "aws" else f"vault-{plugin}"
            row = result.summary() | {
                "plugin": name,
                "delay_ms": side.delay_ms,
                "quota_qps": side.quota_qps,
                "kms": side.condition,
                "peer": PEERS[side.family],
            }
            print(
                f"  plugin {name} {workload} x{concurrency}: {result.rps:.0f} req/s, "
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
    parser.add_argument(
        "--quota-qps",
        type=float,
        default=None,
        help="also run the AWS cases at the largest delay with this KMS quota",
    )
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
        "peers": {name: pinned_sources().get(name, "?") for name in PEERS.values()},
    }
    results["cases"], results["plugin"] = [], []
    try:
        for round_no in range(args.rounds):
            forward = round_no % 2 == 0
            print(f"round {round_no + 1}/{args.rounds}", flush=True)
            static = [c for c in STATIC_CASES if c in cases]
            for case in static if forward else static[::-1]:
                results["cases"].append(run_case(case, None, settings) | {"round": round_no})
            sides = [
                (family, delay, None)
                for delay in delays
                for family, family_cases in (("aws", AWS_CASES), ("vault", VAULT_CASES))
                if set(family_cases) & set(cases)
            ]
            if args.quota_qps and set(AWS_CASES) & set(cases):
                sides.append(("aws", max(delays), args.quota_qps))
            for family, delay, quota in sides:
                family_cases = [
                    c for c in (AWS_CASES if family == "aws" else VAULT_CASES) if c in cases
                ]
                label = f"{family}-{delay:g}ms{'-quota' if quota else ''}-{round_no}"
                with kms_side(family, delay, workdir / label, quota) as side:
                    for case in family_cases if forward else family_cases[::-1]:
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
