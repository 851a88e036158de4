"""Logging set-up for the `kmsplug` command (library modules only call getLogger).

Records carry their `extra` fields; key material never reaches a log call, and a
redaction filter drops any bytes-valued field as a second line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

AUDIT_LOGGER = "kmsplug.audit"

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class _DropBytes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _extras(record).items():
            if isinstance(value, bytes | bytearray | memoryview):
                setattr(record, key, "<redacted>")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: "
        line += record.getMessage() + (f" {extras}" if extras else "")
        if record.exc_info and record.exc_info[0] is not None:
            line += f" error={record.exc_info[0].__name__}"
        return line


def setup(level: str = "info", fmt: str = "text", audit: str = "") -> None:
    """Logs to stderr; the audit trail (remote KMS calls, key events) to `audit` if given.

    The audit trail is one JSON object per line, whatever the log format, so it can be
    shipped and queried as is. `audit="-"` writes it to stdout.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_DropBytes())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO; the audit trail already records each KMS call.
    logging.getLogger("httpx").setLevel(logging.WARNING)
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
