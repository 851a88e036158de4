"""kmsplug started while its KMS does not answer: it exits at once and says why.

kmsplug keeps no key on disk, so a (re)start during a KMS outage cannot serve; what it
owes the operator is a fast exit (kubelet or systemd retry it) and a message that names
the KMS as the cause, not an SDK's exception name. The HA bed shows the same for a node
restarted in an outage (tests/e2e/test_ha_outage.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fakes.alibaba_kms import FakeAlibabaKms
from fakes.alibaba_provider import env_for
from plugin_process import PluginFactory


@pytest.fixture
def silent_kms() -> Iterator[FakeAlibabaKms]:
    fake = FakeAlibabaKms().start()
    yield fake
    fake.stop()


@pytest.mark.parametrize("fault", ["hang", "down"])
def test_start_without_the_kms_fails_fast_and_says_why(
    silent_kms: FakeAlibabaKms,
    plugin_factory: PluginFactory,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    key = silent_kms.create_key()
    for name, value in env_for(silent_kms).items():
        monkeypatch.setenv(name, value)
    endpoint = silent_kms.host
    if fault == "hang":
        silent_kms.set_hang(True)  # requests read, never answered
    else:
        silent_kms.stop()  # nothing listens: connections refused
    flags = ("--provider", "alibaba", "--key-id", key, "--region", silent_kms.region)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 1") as exited:
        plugin_factory(*flags, "--kms-endpoint", endpoint, "--kms-protocol", "http")
    message = str(exited.value)
    assert "cannot start while the KMS is unavailable" in message
    said = "did not answer in time" if fault == "hang" else "could not be reached"
    assert said in message and "Traceback" not in message
    assert time.monotonic() - started < 60  # the SDK's 2 s timeout, not a hang
