"""KMS plugin endpoints: `unix:///absolute/path` or `unix:///@abstract-name`.

kube-apiserver accepts only the unix scheme (kms-protocol.md 1.1); the same rule here means
a config that works for us works for the apiserver. An abstract socket has no file and so
no file permissions: anything in the same network namespace can connect to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kmsplug.errors import ConfigError

_SCHEME = "unix://"
#: sockaddr_un's sun_path holds 108 bytes on Linux: a path and its terminating NUL, or an
#: abstract name after its leading NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed plugin endpoint."""

    path: str
    """The socket file path, or the abstract name without its leading '@'."""
    abstract: bool = False

    @classmethod
    def parse(cls, value: str) -> Endpoint:
        """Parse `unix:///path`, `unix:///@name` or, for convenience, a bare `/path`."""
        raw = value.strip()
        if raw.startswith("/"):
            raw = _SCHEME + raw
        if not raw.startswith(_SCHEME):
            raise ConfigError(f"socket endpoint must use the unix:// scheme, got {value!r}")
        path = raw[len(_SCHEME) :]
        if path.startswith("/@"):
            name = path[2:]
            if not name:
                raise ConfigError("abstract socket endpoint has an empty name")
            return cls(path=_short_enough(name, "abstract socket name"), abstract=True)
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"socket endpoint must name an absolute path, got {value!r}")
        return cls(path=_short_enough(path, "socket path"))

    @property
    def url(self) -> str:
        """The form kube-apiserver's EncryptionConfiguration takes."""
        return f"{_SCHEME}/@{self.path}" if self.abstract else f"{_SCHEME}{self.path}"

    @property
    def grpc_target(self) -> str:
        """The form gRPC's own resolvers take."""
        return f"unix-abstract:{self.path}" if self.abstract else f"unix:{self.path}"

    @property
    def sockaddr(self) -> str:
        """The address for socket.connect/bind (a leading NUL selects the abstract namespace)."""
        return f"\0{self.path}" if self.abstract else self.path

    def __str__(self) -> str:
        return self.url


def _short_enough(path: str, what: str) -> str:
    size = len(path.encode())
    if size > MAX_SOCKET_PATH:
        raise ConfigError(
            f"{what} is {size} bytes; a UNIX socket address holds at most {MAX_SOCKET_PATH}: "
            "choose a shorter path"
        )
    return path
