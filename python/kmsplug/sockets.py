"""Claiming the plugin socket safely.

gRPC silently unlinks an existing socket file, even one a live server is bound to, and
the new server takes over. After a crash or a hard reboot the old file stays behind. So
before binding: hold a lock file for our lifetime (two kmsplug processes cannot race),
refuse if anything answers on the socket, and only then remove a stale file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path
from types import TracebackType

from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError


class SocketInUse(ConfigError):
    """Another server is live on the socket."""


def is_live(endpoint: Endpoint, timeout: float = 1.0) -> bool:
    """Whether something accepts connections on the endpoint."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(endpoint.sockaddr)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except TimeoutError:
        return True  # a full backlog is still a live server
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return False
        raise
    finally:
        probe.close()
    return True


class SocketGuard:
    """Owns the socket path from before bind until after the server stopped."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> Path | None:
        return None if self.endpoint.abstract else Path(self.endpoint.path + ".lock")

    def claim(self) -> None:
        """Lock, check for a live peer, clear a stale socket file. Raises SocketInUse."""
        if self.endpoint.abstract:
            if is_live(self.endpoint):
                raise SocketInUse(f"a server is already listening on {self.endpoint}")
            return
        path = Path(self.endpoint.path)
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._take_lock()
        if is_live(self.endpoint):
            raise SocketInUse(f"a server is already listening on {self.endpoint}")
        with contextlib.suppress(FileNotFoundError):
            mode = path.lstat().st_mode
            if not stat.S_ISSOCK(mode):
                raise ConfigError(f"{path} exists and is not a socket; refusing to remove it")
            path.unlink()  # stale: left by a process that is gone

    def _take_lock(self) -> None:
        lock_path = self.lock_path
        assert lock_path is not None
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SocketInUse(
                f"another kmsplug holds {lock_path}; is it already serving {self.endpoint}?"
            ) from None
        self._lock_fd = fd

    def set_mode(self, mode: int) -> None:
        """Restrict who may connect (kube-apiserver runs as root: 0600 by default)."""
        if not self.endpoint.abstract:
            os.chmod(self.endpoint.path, mode)

    def remove_socket(self) -> None:
        """Unlink our socket file so new connections fail fast; idempotent."""
        if not self.endpoint.abstract and self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.endpoint.path)

    def release(self) -> None:
        # The lock file stays: unlinking it would let two later starts lock two inodes.
        self.remove_socket()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SocketGuard:
        self.claim()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
