"""Issue 12, point 5: files, sockets and start-up.

Real `kmsplug serve` processes on real sockets (and one real grpc.aio server in this
process for the bind window). What each refusal must look like: exit code 1 (2 for a
flag click rejects), no traceback, one line naming the path and what to do, and nothing
created on the way (no socket, no key file). Checks that need a second user (a file
owned by someone else, a directory kmsplug cannot write) run only as root, which can
hand a file to `nobody` and start kmsplug as `nobody` with setpriv.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kmsplug.endpoint import Endpoint
from kmsplug.sockets import SocketGuard

from plugin_process import PluginFactory, PluginProcess

NOBODY = 65534
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: to act as a second user")
KMSPLUG = [sys.executable, "-m", "kmsplug"]


@dataclass
class Exit:
    code: int
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def refused(self, *phrases: str, code: int = 1) -> str:
        """Assert a clean refusal whose last line holds every phrase; return that line."""
        assert "Traceback" not in self.stderr, self.stderr
        assert self.code == code, self.stderr
        for phrase in phrases:
            assert phrase in self.last_line, self.stderr
        return self.last_line


def run_kmsplug(*args: str, user: int | None = None, timeout: float = 60.0) -> Exit:
    """Run `kmsplug ARGS` expecting it to exit. One that keeps running (serves, or hangs
    reading a FIFO) is killed by its PID and fails the test."""
    prefix = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}"]
    command = [*prefix, *(["--clear-groups"] if user is not None else []), *KMSPLUG, *args]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate(timeout=10)
        pytest.fail(f"kmsplug {' '.join(args[:1])} kept running for {timeout} s:\n{stderr}")
    return Exit(process.returncode, stderr)


def serve(directory: Path, *args: str, user: int | None = None, timeout: float = 60.0) -> Exit:
    """`kmsplug serve` with its socket and key file in `directory` unless `args` say."""
    defaults = {
        "--socket": str(directory / "kms.sock"),
        "--key-file": str(directory / "local.key"),
        "--http-address": "",
    }
    given = {arg.split("=", 1)[0] for arg in args}
    extra = [
        item for flag, value in defaults.items() if flag not in given for item in (flag, value)
    ]
    return run_kmsplug("serve", *extra, *args, user=user, timeout=timeout)


@pytest.fixture
def workdir(short_tmp: Path) -> Path:
    """A private directory (0700, ours) under the test's short path."""
    path = short_tmp / "w"
    path.mkdir(mode=0o700)
    return path


# -- the lock file and the socket's mode ---------------------------------------------------


def test_lock_file_is_never_opened_through_a_symbolic_link(workdir: Path) -> None:
    """A dangling link where the lock file goes: followed with O_CREAT, a root kmsplug
    would create (and lock) a file wherever the link points."""
    target = workdir / "created-through-the-link"
    (workdir / "kms.sock.lock").symlink_to(target)
    line = serve(workdir, timeout=30).refused("kms.sock.lock", "symbolic link")
    assert "refusing to follow" in line
    assert not target.exists()
    assert not (workdir / "kms.sock").exists()


@pytest.mark.anyio
async def test_socket_mode_comes_from_the_umask_at_bind_not_a_chmod_after(short_tmp: Path) -> None:
    """Another user swaps the fresh socket for a link to a file of root's in the moment
    after bind: a chmod on the path (as main did) would make that file 0666."""
    from kmsplug.server import _bind, new_grpc_server

    victim = short_tmp / "victim"
    victim.write_text("root's file")
    victim.chmod(0o600)
    path = short_tmp / "kms.sock"
    guard = SocketGuard(Endpoint(path=str(path)))
    guard.claim()
    server = new_grpc_server()
    start = server.start

    async def start_then_swap() -> None:
        await start()
        assert stat.S_IMODE(path.lstat().st_mode) == 0o666  # the mode, from bind itself
        path.unlink()
        path.symlink_to(victim)

    server.start = start_then_swap  # type: ignore[method-assign]
    try:
        await _bind(server, guard, 0o666)
    finally:
        await server.stop(None)
        guard.release()
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_served_socket_has_the_mode_asked_for(plugin_factory: PluginFactory, mode: int) -> None:
    plugin = plugin_factory("--socket-mode", f"{mode:04o}")
    assert stat.S_IMODE(os.lstat(plugin.endpoint.path).st_mode) == mode
    assert stat.S_ISSOCK(os.lstat(plugin.endpoint.path).st_mode)


# -- the socket directory (StrictModes) ----------------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o1777])
def test_socket_directory_writable_by_group_or_others_is_refused(workdir: Path, mode: int) -> None:
    sockets = workdir / "sockets"
    sockets.mkdir()
    sockets.chmod(mode)
    line = serve(workdir, "--socket", str(sockets / "kms.sock"), timeout=30).refused(
        str(sockets), "writable by group or others", "chmod go-w"
    )
    assert f"{mode & 0o7777:04o}" in line
    assert list(sockets.iterdir()) == []  # no lock, no socket
    assert not (workdir / "local.key").exists()  # refused before the key file is made


def test_a_writable_directory_above_the_socket_is_refused(workdir: Path) -> None:
    """Whoever can rename the socket's directory can put their own in its place."""
    above = workdir / "above"
    (above / "sockets").mkdir(parents=True)
    above.chmod(0o777)
    serve(workdir, "--socket", str(above / "sockets" / "kms.sock"), timeout=30).refused(
        str(above), "writable by group or others"
    )


def test_a_sticky_world_writable_directory_above_the_socket_is_fine(
    plugin_factory: PluginFactory, short_tmp: Path
) -> None:
    """/tmp-like: only an entry's owner may rename it, so a private directory in it holds."""
    above = short_tmp / "sticky"
    (above / "sockets").mkdir(parents=True)
    above.chmod(0o1777)
    plugin = plugin_factory(endpoint=Endpoint(path=str(above / "sockets" / "kms.sock")))
    assert stat.S_ISSOCK(os.lstat(plugin.endpoint.path).st_mode)


@needs_root
def test_socket_directory_of_another_user_is_refused(workdir: Path) -> None:
    sockets = workdir / "sockets"
    sockets.mkdir(mode=0o755)
    os.chown(sockets, NOBODY, NOBODY)
    serve(workdir, "--socket", str(sockets / "kms.sock"), timeout=30).refused(
        str(sockets), f"belongs to uid {NOBODY}", "chown"
    )


# -- the key file --------------------------------------------------------------------------


def test_a_fifo_as_key_file_is_refused_at_once(workdir: Path) -> None:
    """main opened it blocking: start-up hung until someone wrote to the FIFO."""
    fifo = workdir / "local.key"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    serve(workdir, timeout=30).refused(str(fifo), "not a regular file")
    assert time.monotonic() - started < 30
    assert not (workdir / "kms.sock").exists()


def test_a_symbolic_link_as_key_file_is_refused(workdir: Path) -> None:
    real = workdir / "real.key"
    real.write_bytes(os.urandom(32))
    real.chmod(0o600)
    (workdir / "local.key").symlink_to(real)
    serve(workdir, timeout=30).refused("local.key", "symbolic link")


@needs_root
@pytest.mark.parametrize("option", ["--key-file", "--decrypt-key-file"])
def test_a_key_file_owned_by_another_user_is_refused(workdir: Path, option: str) -> None:
    """Its owner chose the key (and can read it): kmsplug must not seal under it."""
    theirs = workdir / "theirs.key"
    theirs.write_bytes(os.urandom(32))
    theirs.chmod(0o600)
    os.chown(theirs, NOBODY, NOBODY)
    serve(workdir, option, str(theirs), timeout=30).refused(
        str(theirs), f"owned by uid {NOBODY}", "chown"
    )


# -- one-line errors instead of tracebacks -------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True])
def test_socket_path_over_the_unix_limit(workdir: Path, abstract: bool) -> None:
    name = "s" * 120
    url = f"unix:///@{name}" if abstract else f"unix://{workdir / name}.sock"
    serve(workdir, "--socket", url).refused("at most 107", "choose a shorter path", code=2)


def test_lock_path_that_is_a_directory(workdir: Path) -> None:
    (workdir / "kms.sock.lock").mkdir()
    serve(workdir, timeout=30).refused("kms.sock.lock", "is a directory")


@pytest.fixture
def nobody_dirs(short_tmp: Path) -> Iterator[tuple[Path, Path]]:
    """(a directory root owns, 0755; one `nobody` owns, 0700) under a path nobody can
    traverse to."""
    short_tmp.chmod(0o755)
    roots, theirs = short_tmp / "root-owned", short_tmp / "nobody-owned"
    roots.mkdir(mode=0o755)
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    yield roots, theirs
    shutil.rmtree(theirs, ignore_errors=True)


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
@pytest.mark.parametrize("where", ["in-directory", "new-directory"])
def test_unwritable_socket_directory(nobody_dirs: tuple[Path, Path], where: str) -> None:
    roots, theirs = nobody_dirs
    socket_path = roots / "kms.sock" if where == "in-directory" else roots / "new" / "kms.sock"
    exit_ = serve(
        theirs, "--socket", str(socket_path), "--key-file", str(theirs / "local.key"), user=NOBODY
    )
    line = exit_.refused("permission denied")
    if where == "in-directory":
        assert "kms.sock.lock" in line and f"uid {NOBODY}" in line
    else:
        assert "cannot create socket directory" in line and str(roots / "new") in line


def test_binary_config_file(workdir: Path) -> None:
    config = workdir / "settings.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    serve(workdir, "--config", str(config)).refused(str(config), "not UTF-8", code=2)
    run_kmsplug("config", "--check", str(config)).refused("not UTF-8", code=2)


def test_duplicate_yaml_keys_are_an_error(workdir: Path) -> None:
    """YAML keeps the last of two equal keys silently; a file with the provider given
    twice is a mistake worth stopping for."""
    config = workdir / "settings.yaml"
    config.write_text('provider: "local"\nlog-level: "debug"\nlog-level: "info"\n')
    run_kmsplug("config", "--check", str(config)).refused("duplicate key 'log-level'", code=2)
    config.write_text('log-level: "debug"\nlog_level: "info"\n')  # the same setting
    run_kmsplug("config", "--check", str(config)).refused("log_level", "given before", code=2)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_config_file_is_an_error(workdir: Path, text: str) -> None:
    """An emptied file (a failed template, a wrong ConfigMap key) would otherwise run the
    plugin on the defaults: the local key file instead of the KMS it was meant to name."""
    config = workdir / "settings.yaml"
    config.write_text(text)
    run_kmsplug("config", "--check", str(config)).refused("holds no settings", code=2)
    serve(workdir, "--config", str(config)).refused("holds no settings", code=2)
    assert not (workdir / "local.key").exists()


def test_config_check_catches_an_http_address_that_cannot_bind(workdir: Path) -> None:
    config = workdir / "settings.yaml"
    config.write_text('http-address: "192.0.2.1:8095"\n')  # TEST-NET-1: no host has it
    run_kmsplug("config", "--check", str(config)).refused("cannot serve HTTP on '192.0.2.1:8095'")
    with socket.socket() as busy:  # in use now: only a note (its kmsplug may hold it)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        config.write_text(f'http-address: "127.0.0.1:{busy.getsockname()[1]}"\n')
        exit_ = run_kmsplug("config", "--check", str(config))
    assert exit_.code == 0, exit_.stderr
    assert "note:" in exit_.stderr and "address already in use" in exit_.stderr


def test_busy_http_port_leaves_no_key_file_behind(plugin: PluginProcess, short_tmp: Path) -> None:
    """The service (and its key file) used to be built before the HTTP port was tried."""
    port = plugin.http_url.rsplit(":", 1)[1]
    second = short_tmp / "second"
    second.mkdir(mode=0o700)
    serve(second, "--http-address", f"127.0.0.1:{port}").refused("address already in use")
    assert list(second.iterdir()) == []


def test_sighup_names_the_settings_that_need_a_restart(
    plugin_factory: PluginFactory, short_tmp: Path
) -> None:
    config = short_tmp / "settings.yaml"
    config.write_text('grace-period: 5\nkek-max-seals: 5000\nv2-status-version: "v2"\n')
    plugin = plugin_factory("--config", str(config))
    config.write_text(
        'grace-period: 7\nkek-max-seals: 6000\nv2-status-version: "v2beta1"\nsocket-mode: "0660"\n'
    )
    plugin.signal(signal.SIGHUP)
    line = wait_for_line(plugin, "take effect only at a restart")
    assert "grace-period" in line and "v2-status-version" in line and "socket-mode" in line
    assert "kek-max-seals" not in line  # applied live
    assert "http-address" not in line and "key-file" not in line  # flags: they cannot move
    wait_for_line(plugin, "rotation settings applied")


def test_abstract_socket_is_warned_about(plugin_factory: PluginFactory) -> None:
    name = f"kmsplug-test-{os.getpid()}-{time.monotonic_ns()}"
    plugin = plugin_factory(endpoint=Endpoint(path=name, abstract=True))
    line = wait_for_line(plugin, "abstract socket")
    assert "WARNING" in line or "warning" in line.lower()
    assert "any user could have bound its name" in line and "filesystem socket" in line


def wait_for_line(plugin: PluginProcess, phrase: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in plugin.log().splitlines():
            if phrase in line:
                return line
        time.sleep(0.05)
    pytest.fail(f"no log line with {phrase!r} in {timeout} s:\n{plugin.log()}")
