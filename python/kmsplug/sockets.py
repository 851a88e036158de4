"""Claiming the plugin socket safely.

gRPC silently unlinks an existing socket file, even one a live server is bound to, and
the new server takes over. After a crash or a hard reboot the old file stays behind. So
before binding: hold a lock file for our lifetime (two kmsplug processes cannot race),
refuse if anything answers on the socket, and only then remove a stale file.

The socket's directory is checked first, as ssh's StrictModes checks ~/.ssh: whoever can
write in it can replace kmsplug's socket with their own, and the apiserver would then
send them every DEK to encrypt. So it, and every directory above it, must belong to root
or to kmsplug's user, and must not be writable by group or others (above the socket's
own directory, a sticky world-writable one such as /tmp is fine: there only an entry's
owner may rename or remove it). kmsplug refuses to start otherwise rather than warn: the
fix is one chmod, and a warning in a log nobody reads would leave the DEKs exposed.

An abstract socket has no file, so neither permissions nor these checks protect it: any
process in the network namespace can connect to it, and any user can bind its name
first. kmsplug says so in a warning at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
from pathlib import Path
from types import TracebackType

from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError

log = logging.getLogger(__name__)

#: Write bits for group and others.
_GROUP_OR_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


class SocketInUse(ConfigError):
    """Another server is live on the socket."""


def _reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def check_directory(directory: Path, *, holds_socket: bool = True) -> None:
    """Refuse a socket directory another user could write in (see the module docstring).

    The resolved path is checked, from `directory` up to /. `holds_socket` is False for
    the nearest existing directory above a socket directory still to be made (kmsplug
    makes it, its own): that one may be sticky and world-writable, as /tmp is.
    """
    user = os.geteuid()
    resolved = Path(os.path.realpath(directory))
    for depth, current in enumerate((resolved, *resolved.parents)):
        try:
            info = os.stat(current)
        except OSError as exc:
            raise ConfigError(f"cannot check socket directory {current}: {_reason(exc)}") from None
        if info.st_uid not in (0, user):
            raise ConfigError(
                f"socket directory {current} belongs to uid {info.st_uid}, neither kmsplug's "
                f"user (uid {user}) nor root: that user could replace the socket; chown it"
            )
        sticky = bool(info.st_mode & stat.S_ISVTX)
        if info.st_mode & _GROUP_OR_OTHER_WRITE and not (sticky and (depth or not holds_socket)):
            raise ConfigError(
                f"socket directory {current} is writable by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}): another user could replace the socket "
                f"and receive the apiserver's DEKs; chmod go-w {current}"
            )


def check_location(endpoint: Endpoint) -> None:
    """`check_directory` before anything is created: the socket's directory, or the
    nearest existing one above it. `SocketGuard.claim` checks again once it exists."""
    if endpoint.abstract:
        return
    directory = Path(endpoint.path).parent
    existing = directory
    while not existing.is_dir() and existing != existing.parent:
        existing = existing.parent
    check_directory(existing, holds_socket=existing == directory)


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
        """Check the directory, lock, check for a live peer, clear a stale socket file.
        Raises SocketInUse, or ConfigError naming what is wrong with the path."""
        if self.endpoint.abstract:
            log.warning(
                "abstract socket: no file permissions protect it, so any process in this "
                "network namespace can connect, and any user could have bound its name "
                "before kmsplug started; prefer a filesystem socket (unix:///path)",
                extra={"endpoint": str(self.endpoint)},
            )
            if is_live(self.endpoint):
                raise SocketInUse(f"a server is already listening on {self.endpoint}")
            return
        path = Path(self.endpoint.path)
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create socket directory {path.parent}: {_reason(exc)}"
            ) from None
        check_directory(path.parent)
        self._take_lock()
        if is_live(self.endpoint):
            raise SocketInUse(f"a server is already listening on {self.endpoint}")
        with contextlib.suppress(FileNotFoundError):
            mode = path.lstat().st_mode
            if not stat.S_ISSOCK(mode):
                raise ConfigError(f"{path} exists and is not a socket; refusing to remove it")
            try:
                path.unlink()  # stale: left by a process that is gone
            except OSError as exc:
                raise ConfigError(f"cannot remove stale socket {path}: {_reason(exc)}") from None

    def _take_lock(self) -> None:
        """Open (never through a symbolic link) and lock the lock file."""
        lock_path = self.lock_path
        assert lock_path is not None
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(lock_path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(
                    f"lock file {lock_path} is a symbolic link; refusing to follow it"
                ) from None
            if exc.errno == errno.EISDIR:
                raise ConfigError(f"lock file {lock_path} is a directory; remove it") from None
            raise ConfigError(
                f"cannot create lock file {lock_path}: {_reason(exc)} (kmsplug runs as uid "
                f"{os.geteuid()}; it needs write access to {lock_path.parent})"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"lock file {lock_path} is not a regular file; remove it")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SocketInUse(
                f"another kmsplug holds {lock_path}; is it already serving {self.endpoint}?"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

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
