"""`kmsplug bench` at each real peer's socket, and at kmsplug's beside it on the same KMS.

The harness is for people comparing plugins: this runs the `kmsplug bench` command itself
(unchanged, as a subprocess) against
  aws-encryption-provider   and kmsplug --provider aws    (local-kms behind the latency proxy)
  vault-kubernetes-kms      and kmsplug --provider vault  (OpenBao behind the latency proxy)
  ack-kms-plugin (2020, v1) and kmsplug's ack-kms-plugin  (the Alibaba fake over HTTPS,
  ack-kms-plugin-v2         and kmsplug's ack-kms-plugin   the same delay, its 1,000 QPS quota)
and prints each table, with the peers' pinned commits.

Usage: python benches/peer_sockets.py [--delay-ms 5] [--duration 3] [--stored 500]
         [--concurrency 1 --concurrency 16] [--peers aws,vault,ack,ack-v2] [--out FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests")]

from peers.runners import (  # noqa: E402
    AckSetup,
    Daemon,
    ack_kms_plugin,
    aws_encryption_provider,
    kmsplug_as_ack,
    kmsplug_serve,
    pinned_sources,
    vault_kubernetes_kms,
)

from aws.emulator import CREDENTIALS, REGION, LocalKms  # noqa: E402
from aws.latency_proxy import LatencyProxy  # noqa: E402
from fakes.alibaba_kms import FakeAlibabaKms, make_test_ca  # noqa: E402
from vault.devserver import transit_server  # noqa: E402

FAMILIES = ("aws", "vault", "ack", "ack-v2")
PEER_OF = {
    "aws": "aws-encryption-provider",
    "vault": "vault-kubernetes-kms",
    "ack": "ack-kms-plugin",
    "ack-v2": "ack-kms-plugin-v2",
}


@dataclass
class Pair:
    peer: Daemon
    kmsplug: Daemon
    workloads: tuple[str, ...]
    kms: str


@contextmanager
def pair(family: str, delay_ms: float, workdir: Path) -> Iterator[Pair]:
    """The real peer and kmsplug, both started, on one KMS with `delay_ms` per call."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if family == "aws":
            kms = LocalKms(workdir).start()
            stack.callback(kms.stop)
            arn = kms.create_key()
            proxy = stack.enter_context(LatencyProxy(kms.endpoint, delay_ms))
            peer = aws_encryption_provider(
                workdir, workdir / "peer.sock", kms_endpoint=proxy.url, key=arn,
                region=REGION, credentials=CREDENTIALS,
            )  # fmt: skip
            ours = kmsplug_serve(
                workdir, workdir / "kmsplug.sock",
                *("--provider", "aws", "--aws-key", arn, "--aws-endpoint", proxy.url),
                *("--aws-region", REGION),
                env=CREDENTIALS,
            )  # fmt: skip
            workloads = ("v1-write", "v1-cold", "v2-status", "v2-cold")
            where = f"local-kms + {delay_ms:g} ms"
        elif family == "vault":
            bao = stack.enter_context(transit_server(workdir / "bao", key="kms"))
            proxy = stack.enter_context(LatencyProxy(bao.address, delay_ms))
            peer = vault_kubernetes_kms(
                workdir, workdir / "peer.sock", address=proxy.url, token=bao.root_token,
                transit_key="kms",
            )  # fmt: skip
            ours = kmsplug_serve(
                workdir, workdir / "kmsplug.sock",
                *("--provider", "vault", "--vault-address", proxy.url),
                *("--vault-transit-key", "kms"),
                env={"VAULT_TOKEN": bao.root_token},
            )  # fmt: skip
            workloads = ("v1-write", "v1-cold", "v2-status", "v2-cold")
            where = f"OpenBao + {delay_ms:g} ms"
        else:
            fake = stack.enter_context(FakeAlibabaKms(tls=make_test_ca(workdir / "ca")))
            fake.set_latency(delay_ms / 1000)
            cmk = fake.create_key()
            access = fake.add_access_key()
            setup = AckSetup(
                key_id=cmk, region=fake.region, domain=fake.host,
                access_key_id=access.access_key_id,
                access_key_secret=access.access_key_secret, ca_file=workdir / "ca" / "ca.crt",
            )  # fmt: skip
            v2 = family == "ack-v2"
            peer = ack_kms_plugin(workdir, workdir / "peer.sock", setup, v2=v2, enable_v1=v2)
            ours = kmsplug_as_ack(workdir, workdir / "kmsplug.sock", setup, enable_v1=v2)
            workloads = ("v1-write", "v1-cold") + (("v2-status", "v2-cold") if v2 else ())
            where = f"Alibaba fake (HTTPS, 1,000 QPS) + {delay_ms:g} ms"
        for daemon in (peer, ours):
            stack.callback(daemon.stop)
            daemon.start(timeout=120)
        yield Pair(peer, ours, workloads, where)


def bench(daemon: Daemon, workloads: tuple[str, ...], args: argparse.Namespace) -> str:
    """`kmsplug bench` on the daemon's socket; its table."""
    command = [
        *(sys.executable, "-m", "kmsplug", "bench", "--socket", daemon.endpoint.url),
        *(arg for w in workloads for arg in ("--workload", w)),
        *(arg for c in args.concurrency for arg in ("--concurrency", str(c))),
        *("--duration", str(args.duration), "--stored", str(args.stored)),
        *("--max-requests", str(args.max_requests)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    table = done.stdout.strip()
    if done.returncode != 0:
        table += f"\n(exit {done.returncode}: {done.stderr.strip()[-300:]})"
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--stored", type=int, default=500)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, action="append", default=None)
    parser.add_argument("--peers", default=",".join(FAMILIES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.concurrency = args.concurrency or [1, 16]
    sources = pinned_sources()
    lines = [
        f"`kmsplug bench` (--duration {args.duration:g} --stored {args.stored} "
        f"--concurrency {' '.join(map(str, args.concurrency))}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="kmsplug-peers-", dir="/tmp") as tmp:
        for family in [f for f in args.peers.split(",") if f]:
            name = PEER_OF[family]
            with pair(family, args.delay_ms, Path(tmp) / family) as running:
                for label, daemon in ((name, running.peer), ("kmsplug", running.kmsplug)):
                    print(f"{family}: {label} ...", file=sys.stderr, flush=True)
                    table = bench(daemon, running.workloads, args)
                    lines += [
                        f"{label} ({sources.get(name, '?') if label == name else 'this tree'}),"
                        f" {running.kms}:",
                        "",
                        "```",
                        table,
                        "```",
                        "",
                    ]
    report = "\n".join(lines)
    if args.out:
        args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
