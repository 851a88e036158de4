"""What several providers need, written once: settings from the environment, encryption
contexts, blocking SDK calls in worker threads, and the facts of a remote call that the
audit record reports."""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import anyio

from kmsplug.errors import ConfigError, KmsplugError

T = TypeVar("T")


def env_value(env: Mapping[str, str], *names: str, default: str = "") -> str:
    """The first of `names` set to something other than blanks in `env`, stripped."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return default


def env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated setting as its items (blanks dropped)."""
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def env_seconds(env: Mapping[str, str], name: str, provider: str, default: float) -> float:
    """A duration setting in seconds; ConfigError naming it when it is not a number."""
    text = env_value(env, name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{provider}: {name} must be a number of seconds") from None


def encryption_context_from(value: str, provider: str) -> dict[str, str]:
    """An encryption context given as JSON (`{"a": "b"}`) or `a=b,c=d`.

    A malformed one is a ConfigError that names `provider`'s setting, not the value.
    """
    value = value.strip()
    if not value:
        return {}
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            raise ConfigError(f"{provider}: the encryption context is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{provider}: the encryption context must be a JSON object")
        return {str(k): str(v) for k, v in parsed.items()}
    pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ConfigError(f"{provider}: the encryption context must be JSON or a=b,c=d")
    return {k.strip(): v.strip() for k, v in pairs}


class WorkerThreads:
    """Runs blocking SDK calls in worker threads, at most `limit` at a time.

    The event loop never waits on an SDK. A caller that gives up (its deadline) returns at
    once; the thread finishes on its own.
    """

    def __init__(self, limit: int) -> None:
        self.limiter = anyio.CapacityLimiter(limit)

    async def run(
        self,
        call: Callable[[], T],
        classify: Callable[[Exception], KmsplugError] | None = None,
    ) -> T:
        """`call()` in a thread; an exception other than a KmsplugError goes through
        `classify` (when given) to become one an operator can act on."""
        try:
            return await anyio.to_thread.run_sync(
                call, limiter=self.limiter, abandon_on_cancel=True
            )
        except KmsplugError:
            raise
        except Exception as exc:
            if classify is None:
                raise
            raise classify(exc) from None


@dataclass
class CallInfo:
    """What a provider learned from one remote call, for the audit record."""

    request_id: str = ""
    key_version: str = ""


#: The resilience layer sets this around each remote call; providers fill it in.
current_call: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("kmsplug_remote_call")


def note_call(request_id: str = "", key_version: str = "") -> None:
    """Record the remote request id and key version of the call in progress."""
    info = current_call.get(None)
    if info is not None:
        info.request_id = request_id or info.request_id
        info.key_version = key_version or info.key_version
