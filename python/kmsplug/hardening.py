"""Process hardening applied before any key is loaded.

- No core dumps: a crash must not write DEKs or the Python heap to disk (RLIMIT_CORE 0).
- Not dumpable (Linux PR_SET_DUMPABLE 0): other processes of the same user cannot ptrace
  us or read /proc/<pid>/mem; root still can, and root can read the key file anyway.
Memory locking (mlock) is not attempted: it needs CAP_IPC_LOCK, and the local KEKs live
inside aws-lc allocations we do not control; swap should be off on control-plane nodes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4


def harden_process() -> list[str]:
    """Apply what the platform allows; return what was applied (for the log)."""
    applied = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        applied.append("core dumps off")
    except (ValueError, OSError) as exc:
        log.warning("could not disable core dumps", extra={"error": type(exc).__name__})
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            applied.append("not dumpable")
        else:
            log.warning("could not mark the process non-dumpable")
    log.info("process hardening", extra={"applied": ", ".join(applied)})
    return applied
