"""The plugins CONFORMANCE.md compares, each started on its KMS, one at a time.

Shared by the peers' conformance test (test_peers_conformance.py), kmsplug's own
(test_kmsplug_conforms.py) and the script that regenerates the published table
(publish.py), so the table and the tests run the same plugins the same way:

- the real peers, built by tests/peers/runners.py from the pinned sources:
  aws-encryption-provider on local-kms, vault-kubernetes-kms on OpenBao (Transit),
  ack-kms-plugin (2020, v1beta1 only) and ack-kms-plugin-v2 on the strict Alibaba fake
  over HTTPS with its HMAC-SHA1 (RPC-style) signatures and a throwaway CA;
- `kmsplug serve` with every provider (local key file, alibaba on the same fake over the
  same HTTPS, vault on OpenBao, aws on local-kms, pkcs11 on SoftHSM) in both modes.

Each plugin gets a fresh KMS (no state or quota left over from the one before).
A plugin that cannot be had here raises `Unavailable` with the reason (the runner's or
the KMS helper's message): the test skips with it, the script prints it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex

import pytest
from peers.runners import (
    BUILD,
    AckSetup,
    Daemon,
    PeerUnavailable,
    ack_kms_plugin,
    aws_encryption_provider,
    kmsplug_serve,
    peer_binary,
    pinned_sources,
    vault_kubernetes_kms,
)

REPO = Path(__file__).resolve().parents[2]
PROVIDERS = ("local", "alibaba", "vault", "aws", "pkcs11")
MODES = ("hierarchy", "direct")
TRANSIT_KEY = "k8s"


class Unavailable(RuntimeError):
    """This plugin or its KMS cannot run here; the message says why."""


#: The burst rows: their deadlines measure the machine's load and, for plugins that make
#: one KMS call per request, the KMS; the tests treat them as informative there.
BURST_ROWS = ("v2.burst", "v2.burst.second_connection", "v1.burst", "v1.burst.second_connection")


@dataclass
class Kms:
    """A KMS started for one plugin: how kmsplug reaches it, and what a peer needs."""

    name: str  # local, alibaba, vault, aws, pkcs11
    flags: list[str] = field(default_factory=list)  # kmsplug serve's provider flags
    env: dict[str, str] = field(default_factory=dict)  # kmsplug serve's environment
    secrets: tuple[str, ...] = ()  # values that must never show in any output
    endpoint: str = ""  # aws, vault: the KMS's URL
    key: str = ""  # aws: the key ARN; vault: the Transit key
    token: str = ""  # vault: the root token
    ack: AckSetup | None = None  # alibaba: what ack-kms-plugin is configured with
    version: str = ""  # the KMS and its version, for the table's notes


def _skipped_to_unavailable(start: Callable[[], Kms]) -> Kms:
    """The KMS helpers skip the calling test when their binary cannot be had; outside
    pytest (publish.py) that is just a reason."""
    try:
        return start()
    except pytest.skip.Exception as exc:
        raise Unavailable(str(exc)) from None


def start_kms(name: str, workdir: Path, stack: ExitStack, *, alibaba_https: bool = True) -> Kms:
    """Start a fresh KMS of kind `name` in `workdir`; `stack` stops it."""
    workdir.mkdir(parents=True, exist_ok=True)
    starters = {
        "local": lambda: Kms("local", version="a key file"),
        "alibaba": lambda: _alibaba(workdir, stack, alibaba_https),
        "vault": lambda: _vault(workdir, stack),
        "aws": lambda: _aws(workdir, stack),
        "pkcs11": lambda: _pkcs11(workdir),
    }
    return _skipped_to_unavailable(starters[name])


def _alibaba(workdir: Path, stack: ExitStack, https: bool) -> Kms:
    """The fake over HTTPS (what ack speaks, and the real service), or plain HTTP for
    kmsplug alone (its --kms-protocol http)."""
    from fakes.alibaba_kms import FakeAlibabaKms, make_test_ca

    ca = make_test_ca(workdir / "ca") if https else None
    fake = stack.enter_context(FakeAlibabaKms(tls=ca))
    key, access = fake.create_key(), fake.add_access_key()
    env = {"ACCESS_KEY_ID": access.access_key_id, "ACCESS_KEY_SECRET": access.access_key_secret}
    ack = None
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca.ca_cert)  # the fake's own CA, for kmsplug as for ack
        ack = AckSetup(
            key_id=key,
            region=fake.region,
            domain=fake.host,
            access_key_id=access.access_key_id,
            access_key_secret=access.access_key_secret,
            ca_file=ca.ca_cert,
        )
    return Kms(
        "alibaba",
        flags=[
            *("--key-id", key, "--region", fake.region, "--kms-endpoint", fake.host),
            *("--kms-protocol", fake.protocol),
        ],
        env=env,
        secrets=(access.access_key_secret,),
        ack=ack,
        version="the project's strict fake (tests/fakes/alibaba_kms.py), "
        + ("HTTPS with a throwaway CA" if https else "plain HTTP"),
    )


def _vault(workdir: Path, stack: ExitStack) -> Kms:
    from vault.devserver import bao_binary, transit_server

    try:
        binary = bao_binary()
    except RuntimeError as exc:
        raise Unavailable(str(exc)) from None
    bao = stack.enter_context(transit_server(workdir / "bao", key=TRANSIT_KEY))
    version = subprocess.run(
        [binary, "version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.split("(")[0]
    return Kms(
        "vault",
        flags=["--vault-address", bao.address, "--vault-transit-key", TRANSIT_KEY],
        env={"VAULT_TOKEN": bao.root_token},
        secrets=(bao.root_token,),
        endpoint=bao.address,
        key=TRANSIT_KEY,
        token=bao.root_token,
        version=f"{version.strip()} dev server, Transit",
    )


def _aws(workdir: Path, stack: ExitStack) -> Kms:
    from aws.emulator import CREDENTIALS, REGION, LocalKms, binary

    kms = LocalKms(workdir).start()
    stack.callback(kms.stop)
    arn = kms.create_key()
    return Kms(
        "aws",
        flags=["--aws-key", arn, "--aws-endpoint", kms.endpoint, "--aws-region", REGION],
        env=dict(CREDENTIALS),
        secrets=(CREDENTIALS["AWS_SECRET_ACCESS_KEY"],),
        endpoint=kms.endpoint,
        key=arn,
        version=binary().parent.name,  # local-kms-<version>: the build cache is keyed by it
    )


def _pkcs11(workdir: Path) -> Kms:
    from hsm.softhsm import LIBRARY, SoftHsm, ensure_installed

    if reason := ensure_installed():
        raise Unavailable(reason)
    pin = token_hex(8)  # long enough never to show up in a report by chance
    hsm = SoftHsm(workdir / "hsm").create()
    hsm.init_token("k8s", pin)
    hsm.keygen("k8s", pin, "kek", "01")
    version = subprocess.run(
        ["softhsm2-util", "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    return Kms(
        "pkcs11",
        flags=["--pkcs11-library", LIBRARY, "--pkcs11-token", "k8s", "--pkcs11-key-label", "kek"],
        env={"SOFTHSM2_CONF": str(hsm.conf), "KMSPLUG_PKCS11_PIN": pin},
        secrets=(pin,),
        version=f"SoftHSM {version}",
    )


# -- the plugins ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plugin:
    """One column of the table: a plugin, the KMS it runs on and the APIs it serves."""

    name: str  # aws-encryption-provider, kmsplug-aws-direct, ...
    kms: str
    api: str  # `kmsplug conformance --api`: both, or v1 for a v1beta1-only plugin
    launch: Callable[[Kms, Path], Daemon]
    peer: str = ""  # the peer's name in tests/peers/runners.py ("" for kmsplug)

    def label(self, kmsplug_commit: str) -> str:
        """The column's heading: the plugin and the commit it was built from."""
        if not self.peer:
            _, provider, mode = self.name.split("-")
            return f"kmsplug {kmsplug_commit} {provider} {mode}"
        source = pinned_sources().get(self.peer, "")
        commit = source.split()[1] if len(source.split()) == 2 else ""
        pinned = commit[:7] if commit else _file_by_file_commits(self.peer)
        return f"{self.peer} {pinned}" + (" (v1 only)" if self.api == "v1" else "")


def _file_by_file_commits(peer: str) -> str:
    """A peer rebuilt file by file has no one commit: name the commits its plugin code
    (plugin/*.go, tests aside) comes from, as listed in <peer>-SOURCES.txt."""
    done = subprocess.run(
        ["bash", str(BUILD), "--sources"], capture_output=True, text=True, check=False
    )
    listing = Path(done.stdout.strip()) / f"{peer}-SOURCES.txt"
    if done.returncode != 0 or not listing.is_file():
        return "(newest source)"
    commits: list[str] = []
    for line in listing.read_text().splitlines():
        words = line.split()
        path = words[0] if len(words) >= 2 else ""
        code = path.startswith("plugin/") and path.endswith(".go") and "_test" not in path
        if code and words[1][:7] not in commits:
            commits.append(words[1][:7])
    return f"(newest source: plugin/ at {' + '.join(commits)})" if commits else "(newest source)"


def _aws_peer(kms: Kms, workdir: Path) -> Daemon:
    from aws.emulator import CREDENTIALS, REGION

    socket = workdir / "aws.sock"
    return aws_encryption_provider(
        workdir, socket, kms_endpoint=kms.endpoint, key=kms.key, region=REGION,
        credentials=dict(CREDENTIALS),
    )  # fmt: skip


def _vault_peer(kms: Kms, workdir: Path) -> Daemon:
    return vault_kubernetes_kms(
        workdir, workdir / "vault.sock", address=kms.endpoint, token=kms.token, transit_key=kms.key
    )


def _ack_peer(v2: bool) -> Callable[[Kms, Path], Daemon]:
    def launch(kms: Kms, workdir: Path) -> Daemon:
        assert kms.ack is not None
        return ack_kms_plugin(workdir, workdir / "ack.sock", kms.ack, v2=v2, enable_v1=v2)

    return launch


def _kmsplug(provider: str, mode: str) -> Callable[[Kms, Path], Daemon]:
    def launch(kms: Kms, workdir: Path) -> Daemon:
        flags = ["--provider", provider, "--mode", mode, *kms.flags]
        return kmsplug_serve(workdir, workdir / "kms.sock", *flags, env=kms.env)

    return launch


PEERS = (
    Plugin("aws-encryption-provider", "aws", "both", _aws_peer, "aws-encryption-provider"),
    Plugin("vault-kubernetes-kms", "vault", "both", _vault_peer, "vault-kubernetes-kms"),
    Plugin("ack-kms-plugin", "alibaba", "v1", _ack_peer(v2=False), "ack-kms-plugin"),
    Plugin("ack-kms-plugin-v2", "alibaba", "both", _ack_peer(v2=True), "ack-kms-plugin-v2"),
)
KMSPLUG = tuple(
    Plugin(f"kmsplug-{provider}-{mode}", provider, "both", _kmsplug(provider, mode))
    for provider in PROVIDERS
    for mode in MODES
)
ALL = {plugin.name: plugin for plugin in (*PEERS, *KMSPLUG)}


@contextmanager
def running(
    plugin: Plugin, workdir: Path, *, alibaba_https: bool = True
) -> Iterator[tuple[Daemon, Kms]]:
    """`plugin` serving on a fresh KMS, healthy; stopped (by PID) with its KMS after.
    `alibaba_https=False`: the Alibaba fake on plain HTTP (kmsplug only: ack needs TLS)."""
    if plugin.peer:
        try:
            peer_binary(plugin.peer)
        except PeerUnavailable as exc:
            raise Unavailable(f"{plugin.peer} not available: {exc}") from None
    with ExitStack() as stack:
        kms = start_kms(plugin.kms, workdir / plugin.kms, stack, alibaba_https=alibaba_https)
        daemon = plugin.launch(kms, workdir)
        stack.callback(daemon.stop)  # before the KMS: the stack unwinds in reverse
        daemon.start(timeout=120)
        yield daemon, kms


def kmsplug_commit() -> str:
    """HEAD's short hash, '+changes' when python/ or rust/ differ from it (the code run)."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip() or "unknown"  # fmt: skip
    changed = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "python", "rust"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return f"{head}+changes" if changed else head
