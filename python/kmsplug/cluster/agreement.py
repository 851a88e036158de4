"""`kmsplug key-agreement`: does every control-plane node write under the same key_id?

Each kube-apiserver writes new data under the key_id its own plugin reported at its last
Status poll. After a rotation of the remote key the plugins notice at different moments
(each re-reads its key every few minutes, at once on SIGHUP) and each apiserver at its next
poll (every minute), so for a while the nodes disagree. A storage migration run meanwhile
rewrites part of the data under the old key: `kmsplug migrate` runs this check first.

Two ways to ask, each giving the key_id a node acts on:
- plugin sockets (`--socket`, repeatable): each plugin's v2 Status, on a node or a bed
  where the sockets are reachable;
- apiservers (`--apiserver URL` repeatable, with one kubeconfig's credentials; or one
  `--kubeconfig` per apiserver; or the addresses behind the `kubernetes` Service): the
  key_id hash each apiserver last got from its plugin's Status
  (apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds) and its own
  verdict on its KMS providers (/readyz).

A node that cannot be asked, reports itself unhealthy, or has not heard from its plugin
for longer than two healthy polls makes the answer "unknown": agreement is claimed only
when every node was seen agreeing.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import click

from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError
from kmsplug.extras import require

STATUS_METRIC = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
STALE_AFTER_SECONDS = 150.0
"""Healthy apiservers ask Status every 60 s: two missed polls and the answer is old."""

AGREE, DISAGREE, UNKNOWN = "agree", "disagree", "unknown"
EXIT_CODES = {AGREE: 0, DISAGREE: 1, UNKNOWN: 2}


def key_id_hash(key_id: str) -> str:
    """The key_id as kube-apiserver's metrics show it: sha256 of its bytes, in full."""
    return "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What one node (a plugin socket, or one KMS v2 provider of an apiserver) said."""

    node: str
    provider: str = ""
    key_id_hash: str = ""
    key_id: str = ""
    """In clear when a plugin was asked; apiservers show only the hash."""
    problem: str = ""
    """Why this node's answer cannot be trusted (unreachable, unhealthy, stale)."""


@dataclass
class Agreement:
    reports: list[NodeReport] = field(default_factory=list)
    expected_hash: str = ""

    @property
    def hashes(self) -> set[str]:
        """The key_id hashes seen; "" stands for a node with no KMS v2 provider."""
        return {report.key_id_hash for report in self.reports}

    @property
    def verdict(self) -> str:
        if not self.reports or any(report.problem for report in self.reports):
            return UNKNOWN
        if len(self.hashes) != 1:
            return DISAGREE
        if self.expected_hash and self.hashes != {self.expected_hash}:
            return DISAGREE
        return AGREE

    def summary(self) -> str:
        verdict = self.verdict
        if verdict == AGREE:
            (agreed,) = self.hashes
            if not agreed:
                return "agree: no node has a KMS v2 provider, so there is no key_id to differ"
            named = next((r.key_id for r in self.reports if r.key_id), "")
            return f"agree: all {len(self.reports)} write under {named or agreed}"
        if verdict == DISAGREE:
            if self.expected_hash and len(self.hashes) == 1:
                return f"disagree: the nodes write under another key_id than {self.expected_hash}"
            return f"disagree: {len(self.hashes)} key_ids among {len(self.reports)} nodes"
        if not self.reports:
            return "unknown: no node to ask"
        troubled = [r for r in self.reports if r.problem]
        return "unknown: " + "; ".join(f"{r.node}: {r.problem}" for r in troubled)

    def table(self) -> str:
        rows = [("node", "provider", "key_id", "problem")]
        for r in self.reports:
            shown = r.key_id or r.key_id_hash or ("-" if r.problem else "(no KMS v2 provider)")
            rows.append((r.node, r.provider or "-", shown, r.problem))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
            + (f"  {row[3]}" if row[3] else "")
            for row in rows
        ]
        return "\n".join([*lines, self.summary()])

    def document(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "summary": self.summary(),
            "expected_key_id_hash": self.expected_hash or None,
            "nodes": [asdict(report) for report in self.reports],
        }


# -- asking plugins ----------------------------------------------------------------------


async def ask_plugin(endpoint: Endpoint, deadline: float) -> NodeReport:
    """A plugin's own answer: the key_id and health of its v2 Status (within `deadline` s)."""
    import grpc

    from kmsplug.client import KmsClient

    async with KmsClient(endpoint, timeout=deadline) as client:
        try:
            status = await client.v2_status(wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            problem = f"Status failed: {exc.code().name}"
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                problem = "serves no KMS v2 (v1 has no key_id to compare)"
            return NodeReport(endpoint.url, problem=problem)
    problem = "" if status.healthz == "ok" else f"unhealthy: {status.healthz}"
    if not status.key_id:
        problem = "empty key_id"
    return NodeReport(
        endpoint.url, key_id_hash=key_id_hash(status.key_id), key_id=status.key_id, problem=problem
    )


def ask_plugins(endpoints: Sequence[Endpoint], timeout: float) -> list[NodeReport]:
    import anyio

    async def ask_all() -> list[NodeReport]:
        reports: list[NodeReport | None] = [None] * len(endpoints)

        async def one(index: int) -> None:
            reports[index] = await ask_plugin(endpoints[index], timeout)

        async with anyio.create_task_group() as tasks:
            for index in range(len(endpoints)):
                tasks.start_soon(one, index)
        return [report for report in reports if report is not None]

    return anyio.run(ask_all)


# -- asking apiservers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Apiserver:
    """One kube-apiserver to ask: a kubeconfig's credentials, maybe another address."""

    kubeconfig: str | None
    url: str = ""
    """Empty: the kubeconfig's own server."""


def latest_status_hashes(metrics_text: str) -> dict[str, tuple[str, float]]:
    """provider name -> (key_id hash, unix time) of the most recent Status answer."""
    from prometheus_client.parser import text_string_to_metric_families

    latest: dict[str, tuple[str, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name != STATUS_METRIC:
                continue
            provider = sample.labels.get("provider_name", "")
            seen = latest.get(provider)
            if seen is None or sample.value > seen[1]:
                latest[provider] = (sample.labels.get("key_id_hash", ""), sample.value)
    return latest


def failing_kms_checks(readyz_verbose: str) -> list[str]:
    """Names of the apiserver's failing KMS checks, from /readyz?verbose lines such as
    `[-]kms-provider-0 failed: reason withheld`."""
    failing = []
    for line in readyz_verbose.splitlines():
        if line.startswith("[-]") and "kms-provider" in line:
            failing.append(line[3:].split()[0])
    return failing


def _get(api_client: Any, path: str, host: str | None, timeout: float) -> tuple[int, str, str]:
    """GET `path` with the client's credentials: (status, body, Date header)."""
    response = api_client.call_api(
        path,
        "GET",
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
        _request_timeout=timeout,
        _host=host,
    )
    return response.status, response.data.decode(errors="replace"), response.headers.get("Date")


def ask_apiserver(target: Apiserver, timeout: float) -> list[NodeReport]:
    """One report per KMS v2 provider the apiserver has asked Status of."""
    from kubernetes import config
    from kubernetes.client.exceptions import ApiException

    api_client = config.new_client_from_config(config_file=target.kubeconfig)
    host = target.url or None
    label = target.url or api_client.configuration.host
    try:
        _, metrics, date = _get(api_client, "/metrics", host, timeout)
        ready_status, readyz, _ = _get(api_client, "/readyz?verbose", host, timeout)
    except ApiException as exc:
        if exc.status != 500:  # /readyz answers 500 when a check fails: read its body
            return [NodeReport(label, problem=f"HTTP {exc.status} {exc.reason}")]
        ready_status, readyz = 500, str(exc.body or "")
    except Exception as exc:  # unreachable, TLS, timeout: this node cannot be asked
        return [NodeReport(label, problem=f"cannot ask: {type(exc).__name__}")]
    latest = latest_status_hashes(metrics)
    failing = failing_kms_checks(readyz) if ready_status != 200 else []
    if not latest:  # no KMS v2 provider: nothing to differ on, unless its KMS checks fail
        problem = "apiserver reports " + ", ".join(failing) + " failing" if failing else ""
        return [NodeReport(label, problem=problem)]
    now = _http_date(date)
    reports = []
    for provider, (hashed, seen_at) in sorted(latest.items()):
        problem = ""
        if failing:
            problem = "apiserver reports " + ", ".join(failing) + " failing"
        elif now is not None and now - seen_at > STALE_AFTER_SECONDS:
            problem = f"last Status answer {now - seen_at:.0f} s ago"
        reports.append(NodeReport(label, provider, hashed, problem=problem))
    return reports


def _http_date(value: str | None) -> float | None:
    """The apiserver's own clock (its Date header), so client clock skew does not matter."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def discover_apiservers(kubeconfig: str | None, timeout: float) -> list[str]:
    """The addresses of every live apiserver: the endpoints of the `kubernetes` Service,
    which each apiserver keeps its own address in. Empty when they are not published."""
    from kubernetes import client, config

    api = client.DiscoveryV1Api(config.new_client_from_config(config_file=kubeconfig))
    slices = api.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=kubernetes", _request_timeout=timeout
    )
    urls: list[str] = []
    for endpoint_slice in slices.items:
        ports = [p.port for p in endpoint_slice.ports or [] if p.name == "https" and p.port]
        for endpoint in endpoint_slice.endpoints or []:
            for address in endpoint.addresses or []:
                host = f"[{address}]" if ":" in address else address
                urls.extend(f"https://{host}:{port}" for port in ports)
    return sorted(set(urls))


def ask_apiservers(targets: Sequence[Apiserver], timeout: float) -> list[NodeReport]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(8, len(targets)))) as pool:
        answers = list(pool.map(lambda target: ask_apiserver(target, timeout), targets))
    return [report for reports in answers for report in reports]


# -- the check -----------------------------------------------------------------------------


def check_agreement(
    *,
    sockets: Sequence[Endpoint] = (),
    apiservers: Sequence[Apiserver] = (),
    provider: str = "",
    expect_key_id: str = "",
    timeout: float = 10.0,
) -> Agreement:
    reports = ask_plugins(sockets, timeout) if sockets else []
    found = ask_apiservers(apiservers, timeout) if apiservers else []
    if provider:
        found = [r for r in found if r.provider in (provider, "")]
    reports.extend(found)
    return Agreement(reports, key_id_hash(expect_key_id) if expect_key_id else "")


def apiserver_targets(
    kubeconfigs: Sequence[str], urls: Sequence[str], *, discover: bool, timeout: float
) -> tuple[list[Apiserver], str]:
    """Which apiservers to ask, and a warning when that may not be all of them.

    With URLs, one kubeconfig gives the credentials; without, each kubeconfig names one
    apiserver; with neither, the apiservers behind the `kubernetes` Service are asked.
    """
    if urls:
        if len(kubeconfigs) > 1:
            raise ConfigError("--apiserver takes the credentials of a single --kubeconfig")
        credentials = kubeconfigs[0] if kubeconfigs else None
        return [Apiserver(credentials, url) for url in urls], ""
    if len(kubeconfigs) > 1 or not discover:
        return [Apiserver(path) for path in kubeconfigs], ""
    credentials = kubeconfigs[0] if kubeconfigs else None
    try:
        found = discover_apiservers(credentials, timeout)
    except Exception as exc:  # no EndpointSlice API, no permission: say so, ask the one we know
        found, why = [], f"({type(exc).__name__})"
    else:
        why = "(the kubernetes Service lists none)"
    if found:
        return [Apiserver(credentials, url) for url in found], ""
    warning = (
        f"could not list the control-plane apiservers {why}: checked only the kubeconfig's "
        "server; pass --apiserver URL for every control-plane node"
    )
    return [Apiserver(credentials)], warning


# -- the command ---------------------------------------------------------------------------


def _endpoints(
    _ctx: click.Context, _param: click.Parameter, values: Sequence[str]
) -> list[Endpoint]:
    try:
        return [Endpoint.parse(value) for value in values]
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("key-agreement")
@click.option(
    "--socket",
    "sockets",
    multiple=True,
    callback=_endpoints,
    help="A node's plugin socket, unix:///path (repeatable): ask each plugin's v2 Status.",
)
@click.option(
    "--apiserver",
    "apiserver_urls",
    multiple=True,
    help="A control-plane node's apiserver, https://HOST:PORT (repeatable), asked with the "
    "--kubeconfig credentials.",
)
@click.option(
    "--kubeconfig",
    "kubeconfigs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Credentials for --apiserver; repeated without --apiserver, each names one "
    "apiserver. Default when nothing else is given: $KUBECONFIG, and the apiservers "
    "behind its `kubernetes` Service.",
)
@click.option("--provider-name", default="", help="Only this KMS v2 provider of the apiservers.")
@click.option("--expect-key-id", default="", help="Agreement also requires this key_id.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def key_agreement(
    sockets: list[Endpoint],
    apiserver_urls: tuple[str, ...],
    kubeconfigs: tuple[str, ...],
    provider_name: str,
    expect_key_id: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Check that every control-plane node writes under the same KMS v2 key_id.

    Exit 0 when all agree, 1 when they disagree, 2 when a node could not be asked, is
    unhealthy or has not heard from its plugin lately (agreement unknown).
    """
    agreement, warning = run_check(
        sockets,
        apiserver_urls,
        kubeconfigs,
        provider_name=provider_name,
        expect_key_id=expect_key_id,
        timeout=timeout,
    )
    if warning:
        click.echo(f"kmsplug: warning: {warning}", err=True)
    click.echo(json.dumps(agreement.document(), indent=2) if as_json else agreement.table())
    sys.exit(EXIT_CODES[agreement.verdict])


def run_check(
    sockets: Sequence[Endpoint],
    apiserver_urls: Sequence[str],
    kubeconfigs: Sequence[str],
    *,
    provider_name: str = "",
    expect_key_id: str = "",
    timeout: float = 10.0,
    ask_kubeconfig_servers: bool = True,
) -> tuple[Agreement, str]:
    """Ask the sockets and the apiservers named; with neither, the apiservers found
    through the (default) kubeconfig. `ask_kubeconfig_servers=False`: a kubeconfig only
    lends its credentials to `apiserver_urls`, its own server is not asked."""
    named_any = bool(sockets or apiserver_urls)
    targets: list[Apiserver] = []
    warning = ""
    if apiserver_urls or not named_any or (kubeconfigs and ask_kubeconfig_servers):
        require("cluster", "asking apiservers for their key_id", ("kubernetes",))
        try:
            targets, warning = apiserver_targets(
                kubeconfigs, apiserver_urls, discover=not named_any, timeout=timeout
            )
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    agreement = check_agreement(
        sockets=sockets,
        apiservers=targets,
        provider=provider_name,
        expect_key_id=expect_key_id,
        timeout=timeout,
    )
    return agreement, warning


F = TypeVar("F", bound=Callable[..., Any])


def requires_key_agreement(command: F) -> F:
    """For `migrate`: check key_id agreement first (its --kubeconfig is the default
    source) and refuse while nodes disagree or cannot be asked, unless told to go on."""
    import functools

    @click.option(
        "--node-socket",
        "agreement_sockets",
        multiple=True,
        callback=_endpoints,
        help="Check this node's plugin socket for key_id agreement first (repeatable).",
    )
    @click.option(
        "--apiserver",
        "agreement_apiservers",
        multiple=True,
        help="Check this control-plane apiserver for key_id agreement first (repeatable; "
        "default: the apiservers behind the kubernetes Service).",
    )
    @click.option(
        "--skip-key-agreement",
        is_flag=True,
        help="Migrate even when the nodes disagree on the key_id or cannot be asked.",
    )
    @functools.wraps(command)
    def guarded(
        *args: Any,
        agreement_sockets: list[Endpoint],
        agreement_apiservers: tuple[str, ...],
        skip_key_agreement: bool,
        **kwargs: Any,
    ) -> Any:
        require("cluster", "kmsplug migrate")
        kubeconfig = kwargs.get("kubeconfig")
        agreement, warning = run_check(
            agreement_sockets,
            agreement_apiservers,
            [kubeconfig] if kubeconfig else [],
            ask_kubeconfig_servers=False,  # migrate's kubeconfig may point at a load balancer
        )
        if warning:
            click.echo(f"kmsplug: warning: {warning}", err=True)
        click.echo(agreement.table(), err=True)
        if agreement.verdict != AGREE:
            if not skip_key_agreement:
                click.echo(
                    "kmsplug: refusing to migrate: the control-plane nodes do not provably "
                    "write under one key_id, so part of the data would be rewritten under "
                    "another key. Wait for every node to pick up the key (SIGHUP its "
                    "kmsplug to hurry it), or pass --skip-key-agreement.",
                    err=True,
                )
                sys.exit(3)
            click.echo("kmsplug: --skip-key-agreement: migrating anyway", err=True)
        return command(*args, **kwargs)

    return guarded  # type: ignore[return-value]
