"""The `kmsplug` command as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plugin_process import PluginProcess

KMSPLUG = [sys.executable, "-m", "kmsplug"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KMSPLUG, *args], capture_output=True, text=True, check=False, env=env, timeout=60
    )


def test_health_exit_codes(plugin: PluginProcess, short_tmp: Path) -> None:
    healthy = run("health", "--socket", plugin.endpoint.url)
    assert healthy.returncode == 0, healthy.stderr
    assert "ok" in healthy.stdout
    missing = run("health", "--socket", f"unix://{short_tmp}/nobody.sock", "--timeout", "1")
    assert missing.returncode == 1
    assert plugin.terminate() == 0
    gone = run("health", "--socket", plugin.endpoint.url, "--timeout", "1")
    assert gone.returncode == 1


def test_health_reads_the_socket_from_the_environment(plugin: PluginProcess) -> None:
    import os

    env = {**os.environ, "KMSPLUG_SOCKET": plugin.endpoint.url}
    assert run("health", env=env).returncode == 0


def test_serve_prints_socket_and_encryption_configuration(plugin: PluginProcess) -> None:
    out = plugin.log()
    assert f"serving on {plugin.endpoint.url}" in out
    document = yaml.safe_load(out.split("---\n", 1)[1].split("\n20", 1)[0])
    provider = document["resources"][0]["providers"][0]["kms"]
    assert provider == {
        "apiVersion": "v2",
        "name": "kmsplug",
        "endpoint": plugin.endpoint.url,
        "timeout": "3s",
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), [("v2", "kmsplug")]),
        (("--api", "v1", "--cachesize", "2000"), [("v1", "kmsplug")]),
        (("--api", "both", "--name", "prod"), [("v2", "prod"), ("v1", "prod-v1")]),
    ],
)
def test_config_prints_a_valid_encryption_configuration(
    args: tuple[str, ...], expected: list[tuple[str, str]]
) -> None:
    result = run("config", "--socket", "unix:///var/run/kmsplugin/socket.sock", *args)
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["kind"] == "EncryptionConfiguration"
    assert document["apiVersion"] == "apiserver.config.k8s.io/v1"
    providers = document["resources"][0]["providers"]
    kms = [p["kms"] for p in providers if "kms" in p]
    assert [(p["apiVersion"], p["name"]) for p in kms] == expected
    assert all(p["endpoint"] == "unix:///var/run/kmsplugin/socket.sock" for p in kms)
    assert providers[-1] == {"identity": {}}
    if "--cachesize" in args:
        assert kms[0]["cachesize"] == 2000


@pytest.mark.parametrize(
    "args",
    [
        ("--socket", "tcp://127.0.0.1:1"),
        ("--api", "v2", "--cachesize", "10"),
        ("--name", "bad:name"),
    ],
)
def test_config_rejects_what_the_apiserver_would(args: tuple[str, ...]) -> None:
    result = run("config", *args)
    assert result.returncode == 2
    assert "Error" in result.stderr


def test_serve_refuses_a_world_readable_key_file(short_tmp: Path) -> None:
    key = short_tmp / "open.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    result = run("serve", "--socket", f"unix://{short_tmp}/k.sock", "--key-file", str(key))
    assert result.returncode == 1
    assert str(key) in result.stderr
    assert "kkkk" not in result.stderr + result.stdout


def test_verify_explains_an_etcd_gateway_that_cannot_reach_etcd() -> None:
    """A gateway answering 503 (e.g. etcd's server certificate lacks client auth while
    client certificates are required) is a usage-level error with a hint, not a trace."""
    import http.server
    import threading

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = run("verify", "--etcd", f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2
    assert "503" in result.stderr and "server certificate does not allow client auth" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
