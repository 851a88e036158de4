"""kmsplug's image (`make image`), run under podman as an operator would run it.

- the image: its user is 65532, PID 1 is tini, no pip or compiler inside, and its size
  stays within a budget;
- run with a host socket directory: it serves there as 65532 with a 0600 socket, and
  `kmsplug health` (the static pod's liveness exec) answers 0 inside the container and
  1 when pointed at nothing;
- `podman stop` sends SIGTERM, kmsplug drains and exits 0 before podman's SIGKILL;
- a real kube-apiserver on the host encrypts Secrets through the container's socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from images import podman
from podman_plugin import PLUGIN_UID, SOCKET, PodmanPlugin

from bed import ClusterBed
from configs import write_config

pytestmark = [pytest.mark.node, pytest.mark.timeout(600)]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SIZE_BUDGET_MB = 300  # measured 248 MB with every provider (docs/operations.md)


@pytest.fixture
def plugin(image: str, host_dir: Path) -> Iterator[PodmanPlugin]:
    running = PodmanPlugin(image, host_dir)
    try:
        yield running.run()
    finally:
        running.remove()


def test_image_runs_tini_as_the_plugin_user_and_stays_small(image: str) -> None:
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{PLUGIN_UID}:{PLUGIN_UID}"
    assert config["Entrypoint"][:2] == ["/usr/bin/tini", "--"]
    assert config.get("StopSignal", "SIGTERM") in ("SIGTERM", "15")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size < SIZE_BUDGET_MB * 1_000_000, f"image is {size / 1e6:.0f} MB"
    # runtime only: no pip, no compiler, no package manager cache
    out = podman(
        "run", "--rm", "--entrypoint", "/bin/sh", image, "-c",
        "command -v pip pip3 gcc cc cargo rustc; ls /var/lib/apt/lists | wc -l",
    )  # fmt: skip
    assert out.stdout.split() == ["0"], out.stdout


def test_serves_on_a_host_socket_dir_as_its_own_user(plugin: PodmanPlugin) -> None:
    socket = Path(plugin.endpoint.path)
    assert socket.stat().st_uid == PLUGIN_UID
    assert socket.stat().st_mode & 0o777 == 0o600
    assert (plugin.key_dir / "local.key").stat().st_uid == PLUGIN_UID
    status, out = plugin.exec("id", "-u")
    assert (status, out.strip()) == (0, str(PLUGIN_UID))
    # well inside the readiness probe's first period, on a loaded 2-core machine
    assert plugin.started_in < 30, f"took {plugin.started_in:.1f} s to serve"


def test_health_is_a_working_liveness_exec(plugin: PodmanPlugin) -> None:
    status, out = plugin.exec("kmsplug", "health", f"--socket=unix://{SOCKET}")
    assert status == 0, out
    status, out = plugin.exec("kmsplug", "health", "--socket=unix:///tmp/absent.sock")
    assert status == 1, out


def test_podman_stop_drains_on_sigterm_without_sigkill(plugin: PodmanPlugin) -> None:
    begin = time.monotonic()
    # podman's own timeout (10 s) before it falls back to SIGKILL, as by default
    out = podman("stop", plugin.name)
    took = time.monotonic() - begin
    assert "SIGKILL" not in out.stderr, out.stderr
    assert plugin.exit_code() == 0, plugin.logs()  # 137 would mean SIGKILL
    logs = plugin.logs()
    assert "SIGTERM" in logs and "stopping" in logs, logs
    assert took < 10, f"podman stop took {took:.1f} s"
    assert not Path(plugin.endpoint.path).exists()  # the socket is gone with it


def test_host_apiserver_encrypts_secrets_through_the_container(
    plugin: PodmanPlugin, host_dir: Path
) -> None:
    document = yaml.safe_load((DEPLOY / "encryption-config-v2.yaml").read_text())
    document["resources"][0]["providers"][0]["kms"]["endpoint"] = plugin.endpoint.url
    config = write_config(host_dir / "encryption.yaml", document)
    bed = ClusterBed(host_dir / "bed")
    try:
        bed.start(config)
        core = bed.core()
        core.create_namespaced_secret(
            "default", {"metadata": {"name": "s"}, "stringData": {"k": "through podman"}}
        )
        assert bed.raw("/registry/secrets/default/s").startswith(b"k8s:enc:kms:v2:kmsplug:")
        read = core.read_namespaced_secret("s", "default")
        assert read.data["k"] == "dGhyb3VnaCBwb2RtYW4="  # base64 of the value
    finally:
        bed.stop()
