"""Where a command's settings come from, and reading them again.

Precedence, highest first: a flag, its environment variable, the config file (`--config`
or KMSPLUG_CONFIG: YAML whose keys are the long flag names), the default. Click resolves
the first three; the config file becomes the command's default map. On SIGHUP, `serve`
reads chosen settings again the same way (flags given at start keep their values).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from kmsplug.cli.options import option

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Where the config file's path is kept in the context, for the SIGHUP re-read.
_CONFIG_FILE = "kmsplug.config_file"


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Read a YAML file of settings into the command's defaults (flags and env still win).

    Keys are the long flag names (`key-file` or `key_file`); an unknown key is an error that
    names it, and values are checked exactly as the flags are. A key given twice is an
    error (YAML would keep the last silently), and so is a file with no settings at all:
    an empty file given on purpose is rare, one emptied by a failed template or a wrong
    ConfigMap key is not, and running on the defaults would mean the local key file
    instead of the KMS the file was meant to name.
    """
    if not value:
        return
    data = _read_yaml(ctx, param, value)
    if data is None or data == {}:
        raise click.BadParameter(
            f"{value} holds no settings; give settings or leave out --config", ctx, param
        )
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value} must hold a mapping of settings", ctx, param)
    by_flag: dict[str, click.Parameter] = {}
    for parameter in ctx.command.params:
        for flag in getattr(parameter, "opts", []):
            if flag.startswith("--"):
                by_flag[flag[2:].replace("-", "_")] = parameter
    defaults: dict[str, object] = {}
    for key, setting in data.items():
        target = by_flag.get(str(key).replace("-", "_"))
        if target is None or not target.name or target.name == param.name:
            raise click.BadParameter(f"{value}: unknown setting {key!r}", ctx, param)
        if target.name in defaults:  # `key-file` and `key_file` both
            raise click.BadParameter(f"{value}: {key!r} names a setting given before", ctx, param)
        problem = _yaml_value_problem(target, setting)
        if problem:
            raise click.BadParameter(f"{value}: {key}: {problem}", ctx, param)
        defaults[target.name] = setting
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[_CONFIG_FILE] = value


def _read_yaml(ctx: click.Context, param: click.Parameter, value: str) -> object:
    """The file's YAML document; click.BadParameter (one line) for anything unreadable."""
    import yaml

    try:
        text = Path(value).read_bytes().decode("utf-8")
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        problem = "is not UTF-8 text (a binary file?)"
    except OSError as exc:
        problem = f"cannot be read: {(exc.strerror or type(exc).__name__).lower()}"
    except yaml.YAMLError as exc:
        problem = "is not valid YAML: " + " ".join(str(exc).split())
    raise click.BadParameter(f"{value} {problem}", ctx, param) from None


@functools.cache
def _strict_loader() -> type[Any]:
    """yaml's SafeLoader, refusing a mapping key given twice."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[object] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = self.construct_object(key_node, deep=deep)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r}", key_node.start_mark
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


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


def check_settings(command: click.Command, path: str) -> dict[str, Any]:
    """Parse `command --config PATH` the way the command would, without running it; the
    settings that resolved (click.BadParameter names a bad one)."""
    context = command.make_context(f"kmsplug {command.name}", ["--config", path])
    with context:
        return dict(context.params)


def rereader(
    ctx: click.Context, names: Sequence[str], build: Callable[[Mapping[str, Any]], T]
) -> Callable[[], T]:
    """A function that reads the settings `names` again, from the config file and the
    environment, and passes all of the command's values to `build`; values given as
    flags stay as they were (flags win, as at start). Any other setting whose value moved
    since the start is named in a warning: it takes effect only at a restart."""
    fixed = [
        f"--{name.replace('_', '-')}={ctx.params[name]}"
        for name in names
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    ]
    # A flag's value cannot move (the command line is fixed); the others can.
    movable = {
        name: value
        for name, value in ctx.params.items()
        if name not in names and ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE
    }
    config_file = ctx.meta.get(_CONFIG_FILE)
    command = ctx.command

    def reread() -> T:
        args = [*(["--config", config_file] if config_file else []), *fixed]
        with command.make_context(f"kmsplug {command.name}", args) as fresh:
            moved = [name for name, value in movable.items() if fresh.params.get(name) != value]
            if moved:
                log.warning(
                    "reload: these settings changed but take effect only at a restart",
                    extra={"settings": ", ".join(name.replace("_", "-") for name in moved)},
                )
            return build(fresh.params)

    return reread
