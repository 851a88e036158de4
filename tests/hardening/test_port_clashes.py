"""Issue 12, point 8: servers that cannot bind port 0 survive a port taken between the
moment it was picked and the moment they bind it (a busy machine, other test runs).

The clash is made, not waited for: the first port handed out is one this test holds.
Real OpenBao, real etcd and kube-apiserver.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import ports
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))  # the bed, as tests/e2e uses it


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held (listening) by this test for its duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield int(holder.getsockname()[1])


def first_then_free(taken: int, count: int = 1) -> Callable[[], int]:
    """A free_port stand-in whose first `count` answers are the taken port."""
    handed = [0]

    def pick() -> int:
        handed[0] += 1
        return taken if handed[0] <= count else ports.free_port()

    return pick


def test_openbao_starts_on_another_port_when_its_port_was_taken(
    taken_port: int, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vault import devserver

    monkeypatch.setattr(devserver, "free_port", first_then_free(taken_port))
    server = devserver.DevServer(short_tmp / "bao")
    (short_tmp / "bao").mkdir()
    try:
        server.start()
        assert server.port != taken_port
        assert server.api("GET", "sys/mounts")  # ours: it knows our root token
    finally:
        server.stop()


def test_cluster_bed_starts_when_etcd_and_apiserver_ports_were_taken(
    taken_port: int, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd's client port and the apiserver's port are both the held one at first."""
    import bed as bed_module
    from configs import identity_config

    monkeypatch.setattr(bed_module, "free_port", ports.free_port)
    cluster = bed_module.ClusterBed(
        short_tmp / "bed",
        etcd_port=taken_port,
        apiserver_port=taken_port,
    )
    config = identity_config(short_tmp / "identity.yaml")
    try:
        cluster.start(config)
        assert taken_port not in (cluster.etcd_port, cluster.apiserver_port)
        assert cluster.get("/readyz")[0] == 200
        cluster.restart_apiserver()  # a restart reuses its port when it is still free
        assert cluster.get("/readyz")[0] == 200
    finally:
        cluster.stop()
