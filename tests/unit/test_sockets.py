from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kmsplug.endpoint import Endpoint
from kmsplug.errors import ConfigError
from kmsplug.sockets import SocketGuard, SocketInUse, is_live


def test_stale_socket_file_is_removed(short_tmp: Path) -> None:
    path = short_tmp / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound, never listening, owner gone: connect is refused
    endpoint = Endpoint(str(path))
    assert not is_live(endpoint)
    with SocketGuard(endpoint):
        assert not path.exists()


def test_live_server_is_never_hijacked(short_tmp: Path) -> None:
    path = short_tmp / "live.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(SocketInUse), SocketGuard(Endpoint(str(path))):
            pass
        assert path.exists()
    finally:
        live.close()


def test_regular_file_is_not_removed(short_tmp: Path) -> None:
    path = short_tmp / "data.sock"
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"), SocketGuard(Endpoint(str(path))):
        pass
    assert path.read_text() == "not a socket"


def test_lock_keeps_a_second_guard_out(short_tmp: Path) -> None:
    endpoint = Endpoint(str(short_tmp / "k.sock"))
    with SocketGuard(endpoint), pytest.raises(SocketInUse), SocketGuard(endpoint):
        pass
    with SocketGuard(endpoint):  # released: usable again
        pass
