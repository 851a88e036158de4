"""Scale: kube-apiserver with kmsplug from 1,000 to 50,000 Secrets, against aesgcm.

Single node (tests/e2e/bed.py, etcd on tmpfs), one fresh bed per case, filled in steps
(--counts, default 1,000 / 10,000 / 50,000). At every step:
  - create throughput of the step's new Secrets (--clients writers, 256-byte payloads);
  - a LIST of them all in pages of 500, as kubectl does (warm);
  - an apiserver restart: seconds to /readyz, the Secrets watch-cache fill (from the
    apiserver's own log: every Secret read and decrypted once) and a cold paged LIST;
  - kmsplug's RSS and CPU seconds (/proc), the apiserver's RSS;
  - remote KMS calls (the Alibaba fake counts every call it answers).
Cases: aesgcm (a local key: the floor), kmsplug-v2, kmsplug-v1 (cachesize --v1-cachesize,
steps up to --v1-max). kmsplug uses the Alibaba provider against the strict fake
(tests/fakes/alibaba_kms.py) with --kms-latency-ms added to every KMS answer.

Three nodes (tests/e2e/ha_bed.py): --ha-count Secrets written through all three, then a
cold start of the whole control plane (every apiserver and plugin stopped, then started
together): seconds until all three apiservers are ready, each node's watch-cache fill,
KMS calls.

Usage: python benches/scale_bench.py [--counts 1000,10000,20000,50000] [--v1-max 20000]
         [--ha-count 50000] [--clients 16] [--out bench-results/scale]
Writes scale.json, report.md and PNG plots into --out (scale_report.py renders them).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
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

from apiserver_load import SecretLoad  # noqa: E402
from cluster_bench import machine, secrets_cache_init  # noqa: E402
from ha_bed import HaBed, Node, rss_mib  # noqa: E402

from kmsplug.encryption_config import encryption_configuration  # noqa: E402
from kmsplug.endpoint import Endpoint  # noqa: E402

from bed import ClusterBed  # noqa: E402
from fakes.alibaba_kms import FakeAlibabaKms  # noqa: E402
from plugin_process import PluginProcess  # noqa: E402

CASES = ("aesgcm", "kmsplug-v2", "kmsplug-v1")
LIST_PAGE = 500  # kubectl's page size
FILL_DEADLINE = 3600.0  # seconds for one step's creates
T = TypeVar("T")


@dataclass
class Settings:
    counts: list[int]
    v1_max: int
    v1_cachesize: int
    clients: int
    kms_latency_ms: float
    workdir: Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Kms:
    """The Alibaba fake and a kmsplug process using it (absent for aesgcm)."""

    fake: FakeAlibabaKms
    plugin: PluginProcess

    def calls(self) -> int:
        return self.fake.count()

    def during(self, work: Callable[[], T]) -> tuple[T, int]:
        before = self.calls()
        value = work()
        return value, self.calls() - before


@contextmanager
def kms_side(workdir: Path, latency_ms: float) -> Iterator[Kms]:
    fake = FakeAlibabaKms().start()
    plugin: PluginProcess | None = None
    try:
        fake.set_latency(latency_ms / 1000)
        cmk = fake.create_key()
        access = fake.add_access_key()
        plugin = PluginProcess(
            endpoint=Endpoint(path=str(workdir / "kmsplug.sock")),
            key_file=workdir / "unused.key",
            args=[
                *("--provider", "alibaba", "--key-id", cmk, "--region", fake.region),
                *("--kms-endpoint", fake.host, "--kms-protocol", "http"),
                # no health probe in the run: the KMS calls counted are the requests' own
                *("--health-probe-interval", "3600"),
            ],
            log_path=workdir / "kmsplug.log",
            env={
                "ACCESS_KEY_ID": access.access_key_id,
                "ACCESS_KEY_SECRET": access.access_key_secret,
            },
        ).start()
        yield Kms(fake, plugin)
    finally:
        if plugin is not None:
            plugin.terminate()
        fake.stop()


def encryption_config(case: str, kms: Kms | None, path: Path, cachesize: int) -> Path:
    if case == "aesgcm":
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        document: dict[str, Any] = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [
                {
                    "resources": ["secrets"],
                    "providers": [
                        {"aesgcm": {"keys": [{"name": "k1", "secret": key}]}},
                        {"identity": {}},
                    ],
                }
            ],
        }
    else:
        assert kms is not None
        api = case.rsplit("-", 1)[1]
        document = encryption_configuration(
            kms.plugin.endpoint, api=api, cachesize=cachesize if api == "v1" else None
        )
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def apiserver_log(bed: ClusterBed) -> Path:
    return bed.workdir / "apiserver.log"


def measure_step(
    bed: ClusterBed, load: SecretLoad, kms: Kms | None, target: int, clients: int
) -> dict[str, Any]:
    """Fill to `target` Secrets, then LIST, restart and LIST cold; every figure."""
    calls = kms.during if kms else (lambda work: (work(), 0))
    row: dict[str, Any] = {"count": target}
    cpu_before = cpu_seconds(kms.plugin.pid) if kms else 0.0
    new = target - load.created
    started = time.monotonic()
    result, row["kms_calls_create"] = calls(
        lambda: anyio.run(load.create, clients, new, FILL_DEADLINE)
    )
    row["create_s"] = time.monotonic() - started
    row["create_per_s"] = new / row["create_s"]
    row["create_errors"] = result.errors
    if load.created < target:
        raise RuntimeError(f"filled {load.created} of {target}: {result.errors}")
    (row["warm_list_ms"], listed), row["kms_calls_warm_list"] = calls(
        lambda: anyio.run(load.list_all, LIST_PAGE)
    )
    assert listed == target, (listed, target)

    def restart() -> int:
        bed.stop_apiserver()
        mark = apiserver_log(bed).stat().st_size
        began = time.monotonic()
        bed.start_apiserver(timeout=1800)
        row["restart_ready_s"] = time.monotonic() - began
        row["cold_list_ms"], cold = anyio.run(load.list_all, LIST_PAGE)
        row["restart_to_list_s"] = time.monotonic() - began
        row["cache_fill_s"] = secrets_cache_init(apiserver_log(bed), mark)
        return int(cold)

    cold, row["kms_calls_restart"] = calls(restart)
    assert cold == target, (cold, target)
    if kms:
        pid = kms.plugin.pid
        row["kmsplug_rss_mib"] = rss_mib([pid]).get(pid)
        row["kmsplug_cpu_s"] = cpu_seconds(pid) - cpu_before
    assert bed.apiserver is not None
    row["apiserver_rss_mib"] = rss_mib([bed.apiserver.pid]).get(bed.apiserver.pid)
    print(
        f"    {target:>6}: {row['create_per_s']:.0f}/s create, "
        f"restart {row['restart_ready_s']:.1f} s, fill {row['cache_fill_s']}, "
        f"cold LIST {row['cold_list_ms'] / 1000:.1f} s, "
        f"KMS calls {row['kms_calls_create']}/{row['kms_calls_restart']}",
        flush=True,
    )
    return row


def run_case(case: str, settings: Settings) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{case}-", dir=settings.workdir))
    steps = [c for c in settings.counts if case != "kmsplug-v1" or c <= settings.v1_max]
    print(f"  {case}: steps {steps}", flush=True)
    try:
        with maybe_kms(case != "aesgcm", workdir, settings.kms_latency_ms) as kms:
            config = encryption_config(case, kms, workdir / "enc.yaml", settings.v1_cachesize)
            bed = ClusterBed(workdir / "bed").start(config, feature_gates=("KMSv1=true",))
            try:
                load = SecretLoad(bed.server_url, bed.token)
                anyio.run(load.ensure_namespace)
                rows = [measure_step(bed, load, kms, n, settings.clients) for n in steps]
            finally:
                bed.stop()
        return {"case": case, "steps": rows}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def maybe_kms(wanted: bool, workdir: Path, latency_ms: float) -> Iterator[Kms | None]:
    if not wanted:
        yield None
        return
    with kms_side(workdir, latency_ms) as kms:
        yield kms


def run_ha(count: int, settings: Settings) -> dict[str, Any]:
    """Three nodes with `count` Secrets: a cold start of the whole control plane."""
    workdir = Path(tempfile.mkdtemp(prefix="ha-", dir=settings.workdir))
    bed = HaBed(
        workdir,
        v1_resources=(),
        etcd_quota_bytes=4 << 30,
        plugin_args=("--health-probe-interval", "30"),  # kmsplug's default
    )
    print(f"  ha: {count} Secrets over three nodes", flush=True)
    try:
        bed.start()
        bed.fake.set_latency(settings.kms_latency_ms / 1000)
        share = count // len(bed.nodes)
        for index, node in enumerate(bed.nodes):
            load = SecretLoad(node.server_url, bed.token)
            load.created = index * share  # names per node: bench-<n> never collide
            if index == 0:
                anyio.run(load.ensure_namespace)
            wanted = share if index < len(bed.nodes) - 1 else count - index * share
            anyio.run(load.create, settings.clients, wanted, FILL_DEADLINE)
        marks = {node.name: node.apiserver_log.stat().st_size for node in bed.nodes}
        calls_before = bed.fake.count()
        for node in bed.nodes:
            node.stop_apiserver()
            node.kill_plugin()
        began = time.monotonic()
        bed.each_node(Node.start_plugin)
        for node in bed.nodes:
            node.launch_apiserver()
        ready: dict[str, float] = {}

        def await_ready(node: Node) -> None:
            node.await_apiserver(1800)
            ready[node.name] = time.monotonic() - began

        bed.each_node(await_ready)
        all_ready = time.monotonic() - began
        fills = {
            node.name: secrets_cache_init(node.apiserver_log, marks[node.name])
            for node in bed.nodes
        }
        load = SecretLoad(bed.nodes[0].server_url, bed.token)
        _, listed = anyio.run(load.list_all, LIST_PAGE)
        row = {
            "count": count,
            "listed": listed,
            "all_ready_s": all_ready,
            "ready_s": ready,
            "cache_fill_s": fills,
            "kms_calls_cold_start": bed.fake.count() - calls_before,
            "kmsplug_rss_mib": [rss_mib([n.plugin.pid]).get(n.plugin.pid) for n in bed.nodes],
        }
        print(f"    all three ready after {all_ready:.1f} s, KMS calls "
              f"{row['kms_calls_cold_start']}, listed {listed}", flush=True)  # fmt: skip
        return row
    finally:
        bed.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1000,10000,20000,50000")
    parser.add_argument("--v1-max", type=int, default=20_000)
    parser.add_argument("--v1-cachesize", type=int, default=20_000)
    parser.add_argument("--ha-count", type=int, default=50_000, help="0 skips the HA run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kms-latency-ms", type=float, default=5.0)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "scale")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(",") if c)
    cases = [c for c in args.cases.split(",") if c]
    if set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(set(cases) - set(CASES)))}")
    args.out.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # etcd on tmpfs
    workdir = Path(tempfile.mkdtemp(prefix="kmsplug-scale-", dir=shm))
    settings = Settings(
        counts, args.v1_max, args.v1_cachesize, args.clients, args.kms_latency_ms, workdir
    )
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": vars(args) | {"out": str(args.out), "counts": counts},
        "cases": [],
        "ha": None,
    }
    try:
        for case in cases:
            results["cases"].append(run_case(case, settings))
        if args.ha_count:
            results["ha"] = run_ha(args.ha_count, settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=1))
    from scale_report import render, write_plots

    report = render(results)
    (args.out / "report.md").write_text(report)
    for path in write_plots(results, args.out):
        print(f"wrote {path}")
    print(report)


if __name__ == "__main__":
    main()
