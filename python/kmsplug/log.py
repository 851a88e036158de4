"""Logging set-up for the `kmsplug` command (library modules only call getLogger).

Records carry their `extra` fields; key material never reaches a log call, and a
redaction filter drops any bytes-valued field as a second line of defence.

Third-party libraries are the other way secrets reach a log: at DEBUG the HTTP stacks
print request lines, headers and bodies (the Alibaba SDK puts `Plaintext` in the query
string; botocore prints request bodies). So whatever kmsplug's own level, records from
other libraries pass only at WARNING and above, with any query string cut out, and the
loggers known to print requests are pinned to WARNING so they do not even format them.

Strings a client chose (a v2 uid, a key_id) go through `clip` before they are logged,
and every field is escaped in text logs: a newline in a uid cannot forge a log line,
and a 3 MiB uid does not add 3 MiB of log per call.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

AUDIT_LOGGER = "kmsplug.audit"

OWN_LOGGERS = ("kmsplug", "__main__")
"""Loggers whose records pass at any level; everything else needs WARNING."""

REQUEST_LOGGERS = (
    "urllib3",  # request lines with query strings (connectionpool), retries with URLs
    "requests",
    "botocore",  # request and response bodies at DEBUG (botocore.endpoint, .parsers)
    "boto3",
    "s3transfer",
    "httpx",  # every request line at INFO
    "httpcore",
    "hpack",  # decoded header values at DEBUG
    "h2",
    "aiohttp",  # aiohttp.client, aiohttp.access, aiohttp.server
    "grpc",  # grpc._cython.cygrpc, grpc.aio
    "alibabacloud-tea",  # Alibaba Tea SDK: method, path + query, headers (DEBUG=sdk)
    "darabonba-core",  # the newer Alibaba SDK core, same debug output
    "credentials",  # alibabacloud_credentials
    "hvac",
    "pkcs11",
)
"""Loggers known to print request URLs, headers or bodies: pinned to WARNING."""

CLIP_LIMIT = 128
FIELD_LIMIT = 512
MESSAGE_LIMIT = 4096

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_QUERY = re.compile(r"\?[^\s\"'<>)]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\\]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else char.encode("unicode_escape").decode("ascii")


def escape(value: str, limit: int = FIELD_LIMIT) -> str:
    """`value` on one line (control characters as escapes), cut at `limit` characters."""
    cut = value[:limit]
    text = _CONTROL.sub(_escape_char, cut)
    if len(value) > limit:
        text += f"...(+{len(value) - limit} chars)"
    return text


def clip(value: object, limit: int = CLIP_LIMIT) -> str:
    """A client-supplied string made safe to log: escaped and at most `limit` characters."""
    return escape(value if isinstance(value, str) else str(value), limit)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class _DropBytes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _extras(record).items():
            if isinstance(value, bytes | bytearray | memoryview):
                setattr(record, key, "<redacted>")
        return True


class _ThirdPartyGate(logging.Filter):
    """Other libraries' records: WARNING and above only, query strings cut out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _own(record.name):
            return True
        if record.levelno < logging.WARNING:
            return False
        record.msg = _QUERY.sub("?<query redacted>", record.getMessage())
        record.args = None
        return True


class _BelowWarning(logging.Filter):
    """Attached to the pinned loggers themselves: a library that lowers its own level
    again (the Tea SDK sets DEBUG and adds its own handler at import) still logs nothing
    below WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_BELOW_WARNING = _BelowWarning()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in _extras(record).items():
        if isinstance(value, str):
            value = escape(value)
        elif not isinstance(value, int | float | bool) and value is not None:
            value = escape(str(value))
        fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": escape(record.getMessage(), MESSAGE_LIMIT),
            **_fields(record),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: "
        line += escape(record.getMessage(), MESSAGE_LIMIT) + (f" {extras}" if extras else "")
        if record.exc_info and record.exc_info[0] is not None:
            line += f" error={record.exc_info[0].__name__}"
        return line


def pin_request_loggers() -> None:
    """Hold every logger that can print requests at WARNING, whatever the root level."""
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if _BELOW_WARNING not in logger.filters:
            logger.addFilter(_BELOW_WARNING)


def setup(level: str = "info", fmt: str = "text", audit: str = "") -> None:
    """Logs to stderr; the audit trail (remote KMS calls, key events) to `audit` if given.

    The audit trail is one JSON object per line, whatever the log format, so it can be
    shipped and queried as is. `audit="-"` writes it to stdout.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ThirdPartyGate())
    handler.addFilter(_DropBytes())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    pin_request_loggers()
    audit_logger = logging.getLogger(AUDIT_LOGGER)
    audit_logger.handlers.clear()
    audit_logger.propagate = not audit
    if audit:
        target: logging.Handler = (
            logging.StreamHandler(sys.stdout) if audit == "-" else logging.FileHandler(audit)
        )
        target.setFormatter(JsonFormatter())
        target.addFilter(_DropBytes())
        audit_logger.addHandler(target)
        audit_logger.setLevel(logging.INFO)
