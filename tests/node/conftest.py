"""Fixtures for the node tests: kmsplug's image under podman, and a control-plane node
(containerd + kubelet + static pods). Marked `node`; skip them with `-m "not node"` or
KMSPLUG_SKIP_NODE=1. CI runs them (`make test` builds what they need: `make node-deps`).

Without the tools (podman, containerd, runc: no root to install them) or the image, the
tests skip and say which is missing; everything else that fails (a kubelet that cannot
start, a pod that never gets ready) fails the test with the node's container states and
log tails, since on this kind of machine every step works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from containerd import PAUSE_IMAGE, remove_workdir
from images import (
    apiserver_image,
    etcd_image,
    image_exists,
    kmsplug_image,
    oci_archive,
    pause_image,
)
from node import ControlPlaneNode, Images
from ports import retry_port_clash

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "node: builds and runs containers (podman, containerd, a kubelet)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("KMSPLUG_SKIP_NODE") != "1":
        return
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.skip(reason="KMSPLUG_SKIP_NODE=1"))


def _missing(*commands: str) -> list[str]:
    return [c for c in commands if shutil.which(c) is None]


@pytest.fixture(scope="session")
def image() -> str:
    """kmsplug's image as `make image` built it."""
    if missing := _missing("podman"):
        pytest.skip(f"not installed: {', '.join(missing)} (make node-deps installs it)")
    name = kmsplug_image()
    if not image_exists(name):
        pytest.skip(f"no image {name}: run `make image`")
    return name


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory for hostPath-like mounts, removed afterwards (short: sockets go here)."""
    path = Path(tempfile.mkdtemp(prefix="kmsplug-host-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def node_tools() -> tuple[Path, Path]:
    """The kubelet and crictl, built from Go modules (cached)."""
    out = subprocess.run(
        [str(HERE / "build-node-tools.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        pytest.fail(f"build-node-tools.sh failed:\n{out.stderr[-3000:]}")
    kubelet, crictl = out.stdout.split()[-2:]
    return Path(kubelet), Path(crictl)


@pytest.fixture(scope="session")
def node(image: str, node_tools: tuple[Path, Path]) -> Iterator[ControlPlaneNode]:
    """One control-plane node for the whole session: the tests share its static pods."""
    if missing := _missing("containerd", "ctr", "runc"):
        pytest.skip(f"not installed: {', '.join(missing)} (make node-deps installs them)")
    workdir = Path(tempfile.mkdtemp(prefix="kmsplug-node-", dir="/tmp"))
    images = Images(kmsplug=image, etcd=etcd_image(), apiserver=apiserver_image())
    pause_image(PAUSE_IMAGE)
    archives = [
        oci_archive(name) for name in (PAUSE_IMAGE, images.etcd, images.apiserver, images.kmsplug)
    ]
    kubelet, crictl = node_tools
    control_plane = ControlPlaneNode(workdir, kubelet, crictl, images, archives)
    try:
        retry_port_clash(control_plane.start, control_plane.repick_ports)
        yield control_plane
    finally:
        control_plane.stop()
        remove_workdir(workdir)
