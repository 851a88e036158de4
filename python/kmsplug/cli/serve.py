"""`kmsplug serve`: the plugin itself.

Its options come in groups, each filling one settings object: the server's (socket, modes,
shutdown, HTTP), the keys' (key files, mode, local-KEK rotation), the output's (logs,
audit), the providers' (cli.provider_flags) and ack-kms-plugin's (cli.ack). Defaults are
read from the objects they fill, so each is written once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import click

from kmsplug.cli.ack import ack_options, log_level
from kmsplug.cli.options import default_of, octal, option, socket_option
from kmsplug.cli.provider_flags import provider_environment, provider_options, resilience_policy
from kmsplug.cli.settings import config_file_option, rereader
from kmsplug.core import MAX_SEALS_LIMIT, RotationPolicy
from kmsplug.errors import ConfigError
from kmsplug.server import ServerSettings
from kmsplug.service import PROBE_INTERVAL

DEFAULT_KEY_FILE = "/var/lib/kmsplug/local.key"
#: The rotation settings SIGHUP reads again.
KEK_SETTINGS = ("kek_rotate_after_seals", "kek_max_seals", "kek_max_age")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _options(*decorators: Decorator) -> Decorator:
    """Several options as one decorator, listed in --help in the order given."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for add in reversed(decorators):
            command = add(command)
        return command

    return apply


server_options = _options(
    socket_option,
    option(
        "--v2-status-version",
        type=click.Choice(["v2", "v2beta1"]),
        default=default_of(ServerSettings, "v2_status_version"),
        envvar="KMSPLUG_V2_STATUS_VERSION",
        help="v2 for Kubernetes 1.29+, v2beta1 for 1.27/1.28 apiservers.",
    ),
    option(
        "--enable-v1/--disable-v1",
        default=default_of(ServerSettings, "enable_v1"),
        envvar="KMSPLUG_ENABLE_V1",
        help="Also serve the deprecated KMS v1beta1 API on the same socket.",
    ),
    option(
        "--socket-mode",
        default=f"{default_of(ServerSettings, 'socket_mode'):04o}",
        envvar="KMSPLUG_SOCKET_MODE",
        callback=octal,
        help="File mode of the socket.",
    ),
    option(
        "--grace-period",
        type=click.FloatRange(min=0),
        default=default_of(ServerSettings, "grace_period"),
        envvar="KMSPLUG_GRACE_PERIOD",
        help="Seconds to let calls in flight finish after SIGTERM.",
    ),
    option(
        "--http-address",
        default=default_of(ServerSettings, "http_address"),
        envvar="KMSPLUG_HTTP_ADDRESS",
        help="/metrics, /healthz, /livez, /readyz (host:port; port 0 picks one; '' turns it off).",
    ),
)

key_options = _options(
    option(
        "--key-file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=DEFAULT_KEY_FILE,
        envvar="KMSPLUG_KEY_FILE",
        help="Local KEK: 32 raw bytes, mode 0600; created on first start if absent.",
    ),
    option(
        "--decrypt-key-file",
        "decrypt_key_files",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        multiple=True,
        envvar="KMSPLUG_DECRYPT_KEY_FILES",
        help="Older key files that stay readable after a rotation (repeatable).",
    ),
    option(
        "--mode",
        type=click.Choice(["hierarchy", "direct"]),
        default="hierarchy",
        envvar="KMSPLUG_MODE",
        help="hierarchy: DEKs sealed under a local KEK wrapped once by the provider; "
        "direct: every DEK wrapped by the provider.",
    ),
    option(
        "--kek-rotate-after-seals",
        type=click.IntRange(min=1),
        default=default_of(RotationPolicy, "rotate_after_seals"),
        envvar="KMSPLUG_KEK_ROTATE_AFTER_SEALS",
        help="Retire the local KEK (in the background) after this many DEKs.",
    ),
    option(
        "--kek-max-seals",
        type=click.IntRange(min=1, max=MAX_SEALS_LIMIT),
        default=default_of(RotationPolicy, "max_seals"),
        envvar="KMSPLUG_KEK_MAX_SEALS",
        help="Hard limit of DEKs per local KEK, and of seals under the key file's root key "
        "(direct mode, probes included; counted per process): random 96-bit nonces, keep "
        "far below 2^32.",
    ),
    option(
        "--kek-max-age",
        type=click.FloatRange(min=1),
        default=default_of(RotationPolicy, "max_age_seconds"),
        envvar="KMSPLUG_KEK_MAX_AGE",
        help="Seconds before the local KEK is retired (sealing stops at twice this age).",
    ),
    option(
        "--health-probe-interval",
        type=click.FloatRange(min=0.1),
        default=PROBE_INTERVAL,
        envvar="KMSPLUG_HEALTH_PROBE_INTERVAL",
        help="Seconds between background checks of the write KEK (wrap+unwrap for remote KMSes).",
    ),
)

output_options = _options(
    option(
        "--provider-name",
        default="kmsplug",
        envvar="KMSPLUG_PROVIDER_NAME",
        help="Provider name used in the printed EncryptionConfiguration.",
    ),
    option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        envvar="KMSPLUG_LOG_LEVEL",
    ),
    option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        envvar="KMSPLUG_LOG_FORMAT",
    ),
    option(
        "--audit-log",
        default="",
        envvar="KMSPLUG_AUDIT_LOG",
        help="Write the audit trail (every remote KMS call, every key event) as JSON lines to "
        "this file ('-' for stdout); default: with the other logs.",
    ),
    option(
        "--event-loop",
        type=click.Choice(["uvloop", "asyncio"]),
        default="uvloop",
        envvar="KMSPLUG_EVENT_LOOP",
        help="uvloop costs ~15% less CPU per call than the default asyncio loop.",
    ),
)


def server_settings(values: Mapping[str, Any]) -> ServerSettings:
    """The server's settings: its fields are named as their options."""
    names = [field.name for field in dataclasses.fields(ServerSettings)]
    return ServerSettings(**{name: values[name] for name in names if name in values})


#: `--compat` modes: the peer plugin whose format they write -> the provider they need.
COMPAT_PROVIDERS = {"ack": "alibaba", "aws": "aws", "vault": "vault"}


def check_compat(compat: str, provider: str) -> None:
    """ConfigError unless `--compat` (if any) fits the write provider."""
    needed = COMPAT_PROVIDERS.get(compat)
    if needed is not None and provider != needed:
        raise ConfigError(f"--compat {compat} writes with --provider {needed}, not {provider}")


def rotation_policy(values: Mapping[str, Any]) -> RotationPolicy:
    """The local-KEK rotation settings (at start, and again on SIGHUP)."""
    max_seals = int(values["kek_max_seals"])
    return RotationPolicy(
        rotate_after_seals=min(int(values["kek_rotate_after_seals"]), max_seals),
        max_seals=max_seals,
        max_age_seconds=float(values["kek_max_age"]),
    )


@click.command()
@config_file_option
@server_options
@key_options
@output_options
@provider_options
@ack_options
def serve(**values: Any) -> None:
    """Serve the plugin (default: the embedded local key, no flags needed)."""
    from kmsplug import log
    from kmsplug.app import build_service, print_ready
    from kmsplug.hardening import harden_process
    from kmsplug.providers import registry
    from kmsplug.server import listen_http
    from kmsplug.server import serve as run
    from kmsplug.sockets import check_location

    provider: str = values["provider"]
    decrypt_providers: tuple[str, ...] = values["decrypt_providers"]
    check_compat(values["compat"], provider)
    registry.require_extras([provider, *decrypt_providers])
    log.setup(log_level(values), values["log_format"], values["audit_log"])
    harden_process()  # before any key is read
    settings = server_settings(values)
    # Before anything is created (a key file, the socket directory): a second kmsplug on
    # the host with the same HTTP port, or an unsafe socket directory, stops here and
    # leaves no trace.
    http_socket = listen_http(settings.http_address)
    check_location(settings.endpoint)
    env = provider_environment(values, os.environ)
    limits = resilience_policy(values)
    writer = registry.build(provider, env, limits)
    readers = [registry.build(name, env, limits) for name in decrypt_providers]
    service = build_service(
        key_file=values["key_file"],
        decrypt_key_files=values["decrypt_key_files"],
        hierarchy=values["mode"] == "hierarchy" and values["compat"] == "none",
        writer=writer,
        readers=[reader for reader in readers if reader is not None],
        probe_interval=values["health_probe_interval"],
        policy=rotation_policy(values),
    )
    reread = rereader(click.get_current_context(), KEK_SETTINGS, rotation_policy)
    anyio.run(
        lambda: run(
            service,
            settings,
            on_ready=lambda: print_ready(settings, values["provider_name"], service),
            reread_policy=reread,
            http_socket=http_socket,
        ),
        backend="asyncio",
        backend_options={"use_uvloop": values["event_loop"] == "uvloop"},
    )
