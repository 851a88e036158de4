"""The `kmsplug` command: serve, health, config.

Every flag has an environment-variable twin (shown in --help), so a static-pod manifest
can configure kmsplug either way.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click

from kmsplug import __version__
from kmsplug.conformance.command import conformance
from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError, KmsplugError, MissingExtra
from kmsplug.extras import require
from kmsplug.provider_options import (
    PROVIDER_SETTING_NAMES,
    provider_environment,
    remote_kms_options,
    resilience_policy,
)
from kmsplug.workloads import WORKLOADS

if TYPE_CHECKING:
    from kmsplug.envelope import RotationPolicy

DEFAULT_SOCKET = "unix:///var/run/kmsplugin/socket.sock"

#: Every option shows its default and its environment twin in --help.
option = functools.partial(click.option, show_default=True, show_envvar=True)
DEFAULT_KEY_FILE = "/var/lib/kmsplug/local.key"


def _endpoint(_ctx: click.Context, _param: click.Parameter, value: str) -> Endpoint:
    try:
        return Endpoint.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _octal(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal file mode") from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{value!r} is not a file mode")
    return mode


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Read a YAML file of settings into the command's defaults (flags and env still win).

    Keys are the long flag names (`key-file` or `key_file`); an unknown key is an error that
    names it, and values are checked exactly as the flags are.
    """
    if not value:
        return
    import yaml

    try:
        data = yaml.safe_load(Path(value).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {value}: {exc}", ctx, param) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value} must hold a mapping of settings", ctx, param)
    by_flag: dict[str, click.Parameter] = {}
    for option in ctx.command.params:
        for flag in getattr(option, "opts", []):
            if flag.startswith("--"):
                by_flag[flag[2:].replace("-", "_")] = option
    defaults: dict[str, object] = {}
    for key, setting in data.items():
        target = by_flag.get(str(key).replace("-", "_"))
        if target is None or not target.name or target.name == param.name:
            raise click.BadParameter(f"{value}: unknown setting {key!r}", ctx, param)
        problem = _yaml_value_problem(target, setting)
        if problem:
            raise click.BadParameter(f"{value}: {key}: {problem}", ctx, param)
        defaults[target.name] = setting
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["kmsplug.config_file"] = value


def _yaml_value_problem(option: click.Parameter, setting: object) -> str:
    """Why a YAML value cannot stand for this option ('' if it can).

    YAML turns unquoted text into other types (`0102` is the octal number 66, `no` is
    false), so text settings must be YAML strings; lists only where a flag repeats.
    """
    values = setting if isinstance(setting, list) else [setting]
    if isinstance(setting, list) and not option.multiple:
        return "takes one value, not a list"
    text_only = not isinstance(
        option.type,
        click.types.IntParamType | click.types.FloatParamType | click.types.BoolParamType,
    )
    for item in values:
        if isinstance(item, dict | list) or item is None:
            return "expected a single value"
        if text_only and not isinstance(item, str):
            return f"write it in quotes (YAML read {item!r} as a {type(item).__name__})"
    return ""


config_file_option = option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="KMSPLUG_CONFIG",
    is_eager=True,
    expose_value=False,
    callback=_load_config_file,
    help="YAML file of settings (keys are flag names); flags and environment override it.",
)

socket_option = option(
    "--socket",
    "--path-to-unix-socket",  # ack-kms-plugin's name, so its manifests work unchanged
    "endpoint",
    default=DEFAULT_SOCKET,
    envvar="KMSPLUG_SOCKET",
    callback=_endpoint,
    help="unix:///path or unix:///@abstract-name (a bare /path works too).",
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MissingExtra as exc:  # one line naming the pip command, not a traceback
            click.echo(f"kmsplug: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmsplug")
def main() -> None:
    """kmsplug: a Kubernetes KMS plugin (KMS v1beta1 and v2 on one socket)."""


@main.command()
@config_file_option
@socket_option
@option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_KEY_FILE,
    envvar="KMSPLUG_KEY_FILE",
    help="Local KEK: 32 raw bytes, mode 0600; created on first start if absent.",
)
@option(
    "--decrypt-key-file",
    "decrypt_key_files",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    multiple=True,
    envvar="KMSPLUG_DECRYPT_KEY_FILES",
    help="Older key files that stay readable after a rotation (repeatable).",
)
@option(
    "--mode",
    type=click.Choice(["hierarchy", "direct"]),
    default="hierarchy",
    envvar="KMSPLUG_MODE",
    help="hierarchy: DEKs sealed under a local KEK wrapped once by the provider; "
    "direct: every DEK wrapped by the provider.",
)
@option(
    "--v2-status-version",
    type=click.Choice(["v2", "v2beta1"]),
    default="v2",
    envvar="KMSPLUG_V2_STATUS_VERSION",
    help="v2 for Kubernetes 1.29+, v2beta1 for 1.27/1.28 apiservers.",
)
@option(
    "--enable-v1/--disable-v1",
    default=True,
    envvar="KMSPLUG_ENABLE_V1",
    help="Also serve the deprecated KMS v1beta1 API on the same socket.",
)
@option(
    "--socket-mode",
    default="0600",
    envvar="KMSPLUG_SOCKET_MODE",
    callback=_octal,
    help="File mode of the socket.",
)
@option(
    "--grace-period",
    type=click.FloatRange(min=0),
    default=15.0,
    envvar="KMSPLUG_GRACE_PERIOD",
    help="Seconds to let calls in flight finish after SIGTERM.",
)
@option(
    "--kek-rotate-after-seals",
    type=click.IntRange(min=1),
    default=1 << 22,
    envvar="KMSPLUG_KEK_ROTATE_AFTER_SEALS",
    help="Retire the local KEK (in the background) after this many DEKs.",
)
@option(
    "--kek-max-seals",
    type=click.IntRange(min=1, max=1 << 32),
    default=1 << 24,
    envvar="KMSPLUG_KEK_MAX_SEALS",
    help="Hard limit of DEKs per local KEK (random 96-bit nonces: keep far below 2^32).",
)
@option(
    "--kek-max-age",
    type=click.FloatRange(min=1),
    default=7 * 24 * 3600.0,
    envvar="KMSPLUG_KEK_MAX_AGE",
    help="Seconds before the local KEK is retired (sealing stops at twice this age).",
)
@option(
    "--http-address",
    default="127.0.0.1:8095",
    envvar="KMSPLUG_HTTP_ADDRESS",
    help="/metrics, /healthz, /livez, /readyz (host:port; port 0 picks one; '' turns it off).",
)
@option(
    "--health-probe-interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    envvar="KMSPLUG_HEALTH_PROBE_INTERVAL",
    help="Seconds between background checks of the write KEK (wrap+unwrap for remote KMSes).",
)
@option(
    "--provider-name",
    default="kmsplug",
    envvar="KMSPLUG_PROVIDER_NAME",
    help="Provider name used in the printed EncryptionConfiguration.",
)
@option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    envvar="KMSPLUG_LOG_LEVEL",
)
@option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="KMSPLUG_LOG_FORMAT",
)
@option(
    "--audit-log",
    default="",
    envvar="KMSPLUG_AUDIT_LOG",
    help="Write the audit trail (every remote KMS call, every key event) as JSON lines to "
    "this file ('-' for stdout); default: with the other logs.",
)
@option(
    "--event-loop",
    type=click.Choice(["uvloop", "asyncio"]),
    default="uvloop",
    envvar="KMSPLUG_EVENT_LOOP",
    help="uvloop costs ~15% less CPU per call than the default asyncio loop.",
)
@option(
    "--provider",
    type=click.Choice(["local", "alibaba", "vault", "pkcs11", "aws"]),
    default="local",
    envvar="KMSPLUG_PROVIDER",
    help="Where the write KEK lives (vault, pkcs11, aws: their --vault-*, --pkcs11-*, "
    "--aws-* settings below; see docs/operations.md).",
)
@option(
    "--decrypt-provider",
    "decrypt_providers",
    type=click.Choice(["local", "alibaba", "vault", "pkcs11", "aws"]),
    multiple=True,
    envvar="KMSPLUG_DECRYPT_PROVIDERS",
    help="Also decrypt what this provider wrapped (repeatable): migrating between KMSes.",
)
@option(
    "--key-id",
    "remote_key",
    default="",
    envvar="KMSPLUG_KEY_ID",
    help="alibaba: the CMK id or alias (ack-kms-plugin's --key-id).",
)
@option(
    "--region",
    default="",
    envvar=["KMSPLUG_REGION", "ACK_KMS_REGION_ID"],
    help="alibaba: region of the KMS (AWS: --aws-region).",
)
@option(
    "--kms-endpoint",
    default="kms-vpc.%s.aliyuncs.com",
    envvar=["KMSPLUG_KMS_ENDPOINT", "ACK_KMS_DOMAIN"],
    help="alibaba: KMS host[:port]; %s becomes the region. Public: kms.%s.aliyuncs.com; "
    "a KMS instance: <instance>.cryptoservice.kms.aliyuncs.com.",
)
@option(
    "--kms-protocol",
    type=click.Choice(["https", "http"]),
    default="https",
    envvar="KMSPLUG_KMS_PROTOCOL",
)
@option(
    "--encryption-context",
    default='{"kmsplug": "local-kek"}',
    envvar="KMSPLUG_ENCRYPTION_CONTEXT",
    help="KMS EncryptionContext bound to every wrap (JSON or a=b,c=d); keep it stable.",
)
@option(
    "--alibaba-allow-spec",
    multiple=True,
    help="Accept a CMK spec other than Aliyun_AES_256 (repeatable).",
)
@option(
    "--compat",
    type=click.Choice(["none", "ack"]),
    default="none",
    envvar="KMSPLUG_COMPAT",
    help="ack: write exactly what ack-kms-plugin writes (direct mode, its key_id), so a "
    "rollback to it can read everything.",
)
@option(
    "--enable-kms-v1",
    is_flag=True,
    hidden=True,
    help="Accepted for ack-kms-plugin compatibility; v1 is served unless --disable-v1.",
)
@option(
    "--gloglevel",
    type=int,
    default=None,
    hidden=True,
    help="ack-kms-plugin's verbosity: 0 info, 1+ debug.",
)
@remote_kms_options
def serve(
    endpoint: Endpoint,
    key_file: Path,
    decrypt_key_files: tuple[Path, ...],
    mode: str,
    v2_status_version: str,
    enable_v1: bool,
    socket_mode: int,
    grace_period: float,
    kek_rotate_after_seals: int,
    kek_max_seals: int,
    kek_max_age: float,
    http_address: str,
    health_probe_interval: float,
    provider_name: str,
    log_level: str,
    log_format: str,
    audit_log: str,
    event_loop: str,
    provider: str,
    decrypt_providers: tuple[str, ...],
    remote_key: str,
    region: str,
    kms_endpoint: str,
    kms_protocol: str,
    encryption_context: str,
    alibaba_allow_spec: tuple[str, ...],
    compat: str,
    enable_kms_v1: bool,
    gloglevel: int | None,
    remote_deadline: float,
    remote_rate: float,
    **provider_settings: object,
) -> None:
    """Serve the plugin (default: the embedded local key, no flags needed)."""
    import os

    unexpected = set(provider_settings) - PROVIDER_SETTING_NAMES
    if unexpected:  # an option was added without a parameter of its own
        raise RuntimeError(f"serve does not handle the options {sorted(unexpected)}")

    from kmsplug import log
    from kmsplug.app import build_service, make_provider, print_ready, require_extras
    from kmsplug.envelope import RotationPolicy
    from kmsplug.server import ServerSettings, serve

    require_extras([provider, *decrypt_providers])
    del enable_kms_v1  # v1 is on by default; --disable-v1 turns it off
    if gloglevel is not None:
        log_level = "debug" if gloglevel > 0 else "info"
    log.setup(log_level, log_format, audit_log)
    from kmsplug.hardening import harden_process

    harden_process()  # before any key is read
    settings = ServerSettings(
        endpoint=endpoint,
        socket_mode=socket_mode,
        grace_period=grace_period,
        v2_status_version=v2_status_version,
        enable_v1=enable_v1,
        http_address=http_address,
    )
    try:
        alibaba = None
        if "alibaba" in (provider, *decrypt_providers):
            from kmsplug.providers.alibaba import (
                ALLOWED_SPECS_DEFAULT,
                AlibabaSettings,
                encryption_context_from,
            )

            alibaba = AlibabaSettings(
                key=remote_key,
                region=region,
                endpoint=kms_endpoint.replace("%s", region),
                protocol=kms_protocol,
                encryption_context=encryption_context_from(encryption_context),
                allowed_specs=ALLOWED_SPECS_DEFAULT + alibaba_allow_spec,
                compat_ack=compat == "ack",
            )
        env = provider_environment(provider_settings, os.environ)
        limits = resilience_policy(remote_deadline, remote_rate)
        writer = make_provider(provider, env, alibaba, limits)
        readers = [make_provider(name, env, alibaba, limits) for name in decrypt_providers]
        service = build_service(
            key_file=key_file,
            decrypt_key_files=decrypt_key_files,
            hierarchy=mode == "hierarchy" and compat == "none",
            writer=writer,
            readers=[reader for reader in readers if reader is not None],
            probe_interval=health_probe_interval,
            policy=RotationPolicy(
                rotate_after_seals=min(kek_rotate_after_seals, kek_max_seals),
                max_seals=kek_max_seals,
                max_age_seconds=kek_max_age,
            ),
        )
        anyio.run(
            lambda: serve(
                service,
                settings,
                on_ready=lambda: print_ready(settings, provider_name, service),
                reread_policy=_policy_rereader(click.get_current_context()),
            ),
            backend="asyncio",
            backend_options={"use_uvloop": event_loop == "uvloop"},
        )
    except KmsplugError as exc:
        click.echo(f"kmsplug: {exc}", err=True)
        sys.exit(1)


@main.command()
@socket_option
@option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    envvar="KMSPLUG_HEALTH_TIMEOUT",
    help="Seconds to wait for the plugin.",
)
def health(endpoint: Endpoint, timeout: float) -> None:
    """Exit 0 only if the plugin on the socket answers healthy (a liveness probe)."""
    from kmsplug.client import check_health

    try:
        healthy, detail = anyio.run(check_health, endpoint, timeout)
    except Exception as exc:  # any failure to ask is unhealthy
        healthy, detail = False, f"{type(exc).__name__}"
    click.echo(detail, err=not healthy)
    sys.exit(0 if healthy else 1)


@main.command()
@socket_option
@option(
    "--api",
    type=click.Choice(["v2", "v1", "both"]),
    default="v2",
    envvar="KMSPLUG_CONFIG_API",
    help="KMS API version of the provider entry (both: a v2 and a v1 provider).",
)
@option(
    "--name",
    default="kmsplug",
    envvar="KMSPLUG_PROVIDER_NAME",
    help="Provider name; it becomes part of every stored value's prefix.",
)
@option(
    "--timeout",
    default="3s",
    envvar="KMSPLUG_CONFIG_TIMEOUT",
    help="Per-call deadline the apiserver uses.",
)
@option(
    "--resource",
    "resources",
    multiple=True,
    default=("secrets",),
    help="Resources to encrypt (repeatable).",
)
@option("--cachesize", type=int, default=None, help="v1 only: the apiserver's DEK cache size.")
@option(
    "--check",
    "check_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Instead: validate a kmsplug settings file for `serve --config` and exit.",
)
@option(
    "--identity-fallback/--no-identity-fallback",
    default=True,
    help="List identity last, so data written before encryption stays readable.",
)
def config(
    endpoint: Endpoint,
    api: str,
    name: str,
    timeout: str,
    resources: tuple[str, ...],
    cachesize: int | None,
    check_file: str | None,
    identity_fallback: bool,
) -> None:
    """Print an EncryptionConfiguration for kube-apiserver that uses this plugin."""
    from kmsplug.encryption_config import encryption_configuration, to_yaml

    if check_file is not None:
        _check_settings(check_file)
        return

    try:
        document = encryption_configuration(
            endpoint,
            api=api,
            name=name,
            timeout=timeout,
            resources=resources,
            cachesize=cachesize,
            identity_fallback=identity_fallback,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(to_yaml(document), nl=False)


@main.command()
@option(
    "--etcd",
    "etcd_url",
    required=True,
    envvar="KMSPLUG_ETCD",
    help="etcd client URL, e.g. http://127.0.0.1:2379 (read-only use).",
)
@option("--prefix", default="/registry", show_default=True, help="kube-apiserver etcd prefix.")
@option(
    "--resource",
    "resources",
    multiple=True,
    default=("secrets",),
    help="Resources to check, named as in an EncryptionConfiguration: secrets, configmaps, "
    "deployments.apps, widgets.example.com (repeatable).",
)
@option(
    "--expect",
    "kinds",
    multiple=True,
    default=("kms-v2", "kms-v1"),
    type=click.Choice(["kms-v2", "kms-v1", "aesgcm", "aescbc", "secretbox", "identity"]),
    help="Storage every value must have (repeatable).",
)
@option("--expect-provider", default="", help="Provider name every value must carry.")
@option("--expect-key-id", default="", help="KMS key_id every value must carry.")
@option("--cacert", type=click.Path(exists=True, dir_okay=False), default=None)
@option("--cert", type=click.Path(exists=True, dir_okay=False), default=None)
@option("--key", type=click.Path(exists=True, dir_okay=False), default=None)
@option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(
    etcd_url: str,
    prefix: str,
    resources: tuple[str, ...],
    kinds: tuple[str, ...],
    expect_provider: str,
    expect_key_id: str,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Report how stored objects are encrypted; exit 1 if any is not as expected."""
    import json

    from kmsplug.cluster.etcd import EtcdReader, EtcdTls
    from kmsplug.cluster.verify import Expectation, verify_etcd

    reader = EtcdReader(etcd_url, tls=EtcdTls(cacert, cert, key))
    expect = Expectation(kinds, expect_provider, expect_key_id)
    try:
        report = verify_etcd(reader, prefix=prefix, resources=resources, expect=expect)
    except OSError as exc:
        hint = ""
        if getattr(exc, "code", None) == 503:
            hint = (
                " (etcd's JSON gateway could not reach etcd: e.g. no leader, or client "
                "certificates required and etcd's server certificate does not allow client auth)"
            )
        click.echo(f"kmsplug: cannot read etcd at {etcd_url}: {exc}{hint}", err=True)
        sys.exit(2)
    if as_json:
        document = {
            "ok": report.ok,
            "total": report.total,
            "stored": report.rows(),
            "empty": report.empty,
            "unexpected": [
                {"key": k, "kind": s.kind, "provider": s.provider, "key_id": s.key_id}
                for k, s in report.unexpected
            ],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(report.table())
        for k, s in report.unexpected[:20]:
            click.echo(f"  unexpected: {k} stored as {s.kind} {s.provider} {s.key_id}".rstrip())
    sys.exit(0 if report.ok else 1)


@main.command()
@option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="KUBECONFIG",
    help="kubeconfig of a user allowed to get, list and update the resources.",
)
@option(
    "--resource",
    "resources",
    multiple=True,
    default=("secrets",),
    help="secrets, configmaps or <plural>.<group> (repeatable).",
)
@option("--page-size", type=click.IntRange(1, 5000), default=500, show_default=True)
@option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where progress is saved; a second run with the same file resumes.",
)
@option("--dry-run", is_flag=True, help="Send every write as a server-side dry run.")
def migrate(
    kubeconfig: str | None,
    resources: tuple[str, ...],
    page_size: int,
    state_file: Path | None,
    dry_run: bool,
) -> None:
    """Rewrite objects so they are stored with the current provider and key_id."""
    require("cluster", "kmsplug migrate")
    from tqdm import tqdm

    from kmsplug.cluster.migrate import MigrationState, Migrator

    bars: dict[str, tqdm] = {}  # type: ignore[type-arg]

    def progress(resource: str, done: int, total: int | None) -> None:
        bar = bars.setdefault(resource, tqdm(desc=resource, unit="obj", total=total, leave=True))
        bar.total = total
        bar.n = done
        bar.refresh()

    state = MigrationState.load(state_file)
    migrator = Migrator(
        kubeconfig, page_size=page_size, dry_run=dry_run, state=state, on_progress=progress
    )
    failed = False
    for resource in resources:
        try:
            result = migrator.migrate(resource)
        except Exception as exc:  # report and go on with the next resource
            failed = True
            click.echo(f"{resource}: failed: {type(exc).__name__}: {exc}", err=True)
            continue
        finally:
            if resource in bars:
                bars[resource].close()
        verb = "would rewrite" if dry_run else "rewrote"
        click.echo(
            f"{resource}: {verb} {result.rewritten}, resumed past {result.skipped}, "
            f"deleted meanwhile {result.gone}, conflicts retried {result.conflicts}"
        )
    sys.exit(1 if failed else 0)


def ack_main() -> None:
    """`ack-kms-plugin`: the same command line as AliyunContainerService/ack-kms-plugin.

    `ack-kms-plugin [flags]` serves with the Alibaba provider; `ack-kms-plugin health
    [flags]` is the liveness check. Its static-pod manifest works with only the image
    changed.
    """
    args = sys.argv[1:]
    if args[:1] == ["health"]:
        main(["health", *_drop_glog(args[1:])])
    else:
        main(["serve", "--provider", "alibaba", *_drop_glog(args)])


def _drop_glog(args: list[str]) -> list[str]:
    """glog flags ack-kms-plugin accepted and kmsplug has no use for."""
    ignored = ("--logtostderr", "--alsologtostderr", "-logtostderr", "-alsologtostderr")
    return [a for a in args if a.split("=", 1)[0] not in ignored]


def _check_settings(path: str) -> None:
    """Parse `serve --config PATH` the way serve would, without serving."""
    context = serve.make_context("kmsplug serve", ["--config", path], resilient_parsing=False)
    with context:
        values = {k: v for k, v in context.params.items() if v not in (None, (), "")}
    click.echo(f"{path}: ok ({len(values)} settings resolved)")


_KEK_SETTINGS = ("kek_rotate_after_seals", "kek_max_seals", "kek_max_age")


def _policy_rereader(ctx: click.Context) -> Callable[[], RotationPolicy]:
    """On SIGHUP: the rotation settings again, from the config file and the environment;
    values given as flags stay as they were (flags win, as at start)."""
    from click.core import ParameterSource

    from kmsplug.envelope import RotationPolicy

    fixed = [
        f"--{name.replace('_', '-')}={ctx.params[name]}"
        for name in _KEK_SETTINGS
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    ]
    config_file = ctx.meta.get("kmsplug.config_file")

    def reread() -> RotationPolicy:
        args = [*(["--config", config_file] if config_file else []), *fixed]
        with serve.make_context("kmsplug serve", args) as fresh:
            values = fresh.params
        return RotationPolicy(
            rotate_after_seals=min(values["kek_rotate_after_seals"], values["kek_max_seals"]),
            max_seals=values["kek_max_seals"],
            max_age_seconds=values["kek_max_age"],
        )

    return reread


@main.command()
@socket_option
@option(
    "--workload",
    "workloads",
    type=click.Choice(list(WORKLOADS)),
    multiple=True,
    default=("v1-write", "v2-cold"),
    help="What the apiserver does (repeatable): "
    + "; ".join(f"{name}: {model}" for name, model in WORKLOADS.items())
    + ".",
)
@option(
    "--concurrency",
    "concurrencies",
    type=click.IntRange(1, 4096),
    multiple=True,
    default=(1, 16, 64),
)
@option("--duration", type=click.FloatRange(0.1, 3600), default=5.0, help="Seconds per run.")
@option("--max-requests", type=click.IntRange(1), default=1_000_000, help="Cap per run.")
@option("--stored", type=click.IntRange(1, 1_000_000), default=2000, help="Secrets stored first.")
@option("--cache-size", type=int, default=1000, help="The apiserver's v1 DEK cache (cachesize).")
@option("--read-ratio", type=click.FloatRange(0, 1), default=0.9, help="mixed: share of reads.")
@option(
    "--payload-size",
    type=click.IntRange(1, 1024),
    default=32,
    help="Bytes of each DEK (v1) or DEK seed (v2) sent; the apiserver sends 32.",
)
@option(
    "--burst-interval",
    type=click.FloatRange(0, 60),
    default=0.5,
    help="v1-burst: seconds between bursts of --concurrency Encrypts.",
)
@option(
    "--status-interval",
    type=click.FloatRange(0.01, 3600),
    default=60.0,
    help="v2-write: seconds between the Status calls that check the key_id.",
)
@option(
    "--metrics-url",
    default=None,
    help="The plugin's Prometheus endpoint: report the remote KMS calls made in each run.",
)
@option(
    "--remote-metric",
    "remote_metrics",
    multiple=True,
    default=("kmsplug_remote_calls",),
    help="Counter(s) at --metrics-url that count remote KMS calls (summed over labels).",
)
@option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@option(
    "--plot-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write latency-cdf.png and throughput.png here (needs kmsplug[bench]).",
)
def bench(
    endpoint: Endpoint,
    workloads: tuple[str, ...],
    concurrencies: tuple[int, ...],
    duration: float,
    max_requests: int,
    stored: int,
    cache_size: int,
    read_ratio: float,
    payload_size: int,
    burst_interval: float,
    status_interval: float,
    metrics_url: str | None,
    remote_metrics: tuple[str, ...],
    as_json: bool,
    plot_dir: Path | None,
) -> None:
    """Load any KMS plugin socket the way kube-apiserver does; report req/s and latency."""
    import json

    require("bench", "kmsplug bench", ("tqdm",))
    if plot_dir is not None:
        require("bench", "kmsplug bench --plot-dir", ("matplotlib",))
    from tqdm import tqdm

    from kmsplug.bench import Plan, RemoteCounter, run, table

    remote = RemoteCounter(metrics_url, remote_metrics) if metrics_url else None
    results = []
    for workload in workloads:
        for concurrency in concurrencies:
            plan = Plan(
                workload,
                concurrency,
                duration,
                max_requests=max_requests,
                stored=stored,
                cache_size=cache_size,
                read_ratio=read_ratio,
                payload_size=payload_size,
                burst_interval=burst_interval,
                status_interval=status_interval,
            )
            with tqdm(desc=f"{workload} x{concurrency}", unit="req", disable=as_json) as bar:
                try:
                    results.append(anyio.run(run, endpoint, plan, lambda n: bar.update(n), remote))
                except ConfigError as exc:
                    raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps([r.summary() for r in results], indent=2))
    else:
        click.echo(table(results))
    if plot_dir is not None:
        from kmsplug.bench_plots import write_plots

        try:
            for path in write_plots(results, plot_dir):
                click.echo(f"wrote {path}", err=as_json)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    sys.exit(1 if any(r.errors for r in results) else 0)


main.add_command(conformance)
