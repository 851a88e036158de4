"""`serve`'s remote-provider options: provider settings as flags / config keys, and the
resilience limits (--remote-deadline, --remote-rate) applied to a real served plugin."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import grpc
import pytest

from kmsplug.cli import serve
from kmsplug.client import KmsClient
from kmsplug.provider_options import (
    DEFAULT_DEADLINE,
    DEFAULT_RATE,
    PROVIDER_SETTINGS,
    provider_environment,
)
from kmsplug.providers.resilient import ResiliencePolicy
from kmsplug.providers.vault import vault_settings_from_env

from fakes.alibaba_kms import FakeAlibabaKms
from fakes.alibaba_provider import env_for
from plugin_process import PluginFactory


def resolved(args: list[str], environ: dict[str, str]) -> dict[str, str]:
    """What the providers would read: serve's parameters resolved as at start-up."""
    with serve.make_context("kmsplug serve", list(args)) as ctx:  # click consumes the list
        return provider_environment(ctx.params, environ)


def test_defaults_match_the_resilience_layer() -> None:
    policy = ResiliencePolicy()
    assert (policy.deadline, policy.rate) == (DEFAULT_DEADLINE, DEFAULT_RATE)


def test_every_setting_is_one_the_provider_modules_read() -> None:
    sources = "".join(
        (Path(__file__).parents[2] / "python/kmsplug/providers" / name).read_text()
        for name in ("vault.py", "aws.py", "pkcs11.py")
    )
    for setting in PROVIDER_SETTINGS:
        assert f'"{setting.variable}"' in sources, setting.variable


def test_flag_beats_environment_beats_config_file(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VAULT_ADDR", "KMSPLUG_VAULT_ADDR", "KMSPLUG_VAULT_TRANSIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = short_tmp / "kmsplug.yaml"
    config.write_text("vault-address: https://from-file:8200\nvault-transit-key: file-key\n")
    base = ["--config", str(config)]

    env = resolved(base, {})
    settings = vault_settings_from_env(env)
    assert (settings.address, settings.key) == ("https://from-file:8200", "file-key")

    monkeypatch.setenv("VAULT_ADDR", "https://from-env:8200")
    env = resolved(base, {"VAULT_ADDR": "https://from-env:8200"})
    assert vault_settings_from_env(env).address == "https://from-env:8200"

    env = resolved([*base, "--vault-address", "https://from-flag:8200"], {})
    assert vault_settings_from_env(env).address == "https://from-flag:8200"


def test_bad_values_are_refused_by_name() -> None:
    from click.testing import CliRunner

    from kmsplug.cli import main

    for args, flag in (
        (["--pkcs11-mechanism", "rot13"], "--pkcs11-mechanism"),
        (["--remote-deadline", "0"], "--remote-deadline"),
        (["--vault-timeout", "soon"], "--vault-timeout"),
    ):
        result = CliRunner().invoke(main, ["serve", *args])
        assert result.exit_code == 2 and f"Invalid value for '{flag}'" in result.output


def test_vault_provider_from_flags_alone(
    plugin_factory: PluginFactory, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything on the command line but the token, which comes from a file; against a
    real OpenBao dev server."""
    from vault.devserver import DevServer

    for name in ("VAULT_ADDR", "VAULT_TOKEN", "KMSPLUG_VAULT_TRANSIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    (short_tmp / "bao").mkdir()
    bao = DevServer(short_tmp / "bao").start()
    try:
        bao.enable_transit("kms")
        bao.create_key("cluster-a", mount="kms")
        token_file = short_tmp / "token"
        token_file.write_text(bao.root_token)
        plugin = plugin_factory(
            "--provider", "vault",
            "--vault-address", bao.address,
            "--vault-transit-mount", "kms",
            "--vault-transit-key", "cluster-a",
            "--vault-token-file", str(token_file),
        )  # fmt: skip

        async def round_trip() -> str:
            async with KmsClient(plugin.endpoint, timeout=10) as client:
                dek = secrets.token_bytes(32)
                sealed = await client.v2_encrypt(dek)
                assert await client.v2_decrypt(sealed.ciphertext, sealed.key_id) == dek
                return sealed.key_id

        assert anyio.run(round_trip) == "vault:kms/cluster-a:v1"
        assert bao.root_token not in plugin.log()
    finally:
        bao.stop()


@pytest.fixture
def alibaba(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeAlibabaKms, list[str]]]:
    """The strict fake Alibaba KMS and the serve flags for it, in direct mode (every DEK
    goes to the KMS, so each call shows the limits)."""
    fake = FakeAlibabaKms().start()
    for name, value in env_for(fake).items():
        monkeypatch.setenv(name, value)
    args = [
        *("--provider", "alibaba", "--key-id", fake.create_key(), "--region", fake.region),
        *("--kms-endpoint", fake.host, "--kms-protocol", "http", "--mode", "direct"),
    ]
    yield fake, args
    fake.stop()


def test_remote_deadline_bounds_a_hung_kms(
    plugin_factory: PluginFactory, alibaba: tuple[FakeAlibabaKms, list[str]]
) -> None:
    fake, args = alibaba
    plugin = plugin_factory(*args, "--remote-deadline", "0.3")

    async def encrypt_while_hung() -> tuple[grpc.StatusCode, float]:
        async with KmsClient(plugin.endpoint, timeout=10) as client:
            fake.set_hang(True)
            started = time.monotonic()
            try:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.v1_encrypt(secrets.token_bytes(32))
            finally:
                fake.set_hang(False)
            return refused.value.code(), time.monotonic() - started

    code, seconds = anyio.run(encrypt_while_hung)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert seconds < 1.5, seconds  # the default deadline would hold it 2.5 s


def test_remote_rate_caps_calls_to_the_kms(
    plugin_factory: PluginFactory, alibaba: tuple[FakeAlibabaKms, list[str]]
) -> None:
    fake, args = alibaba
    plugin = plugin_factory(*args, "--remote-rate", "1", "--remote-deadline", "0.5")

    codes: set[grpc.StatusCode] = set()

    async def burst() -> tuple[int, int]:
        ok = refused = 0
        async with KmsClient(plugin.endpoint, timeout=10) as client:
            await anyio.sleep(1.5)  # the start-up preflight spent the bucket: one refills
            fake.reset_stats()

            async def encrypt() -> None:
                nonlocal ok, refused
                try:
                    await client.v1_encrypt(secrets.token_bytes(32))
                    ok += 1
                except grpc.aio.AioRpcError as exc:
                    codes.add(exc.code())
                    refused += 1

            async with anyio.create_task_group() as tasks:
                for _ in range(20):
                    tasks.start_soon(encrypt)
        return ok, refused

    ok, refused = anyio.run(burst)
    encrypts = sum(n for (action, _), n in fake.call_counts.items() if action == "Encrypt")
    assert ok + refused == 20 and codes == {grpc.StatusCode.UNAVAILABLE}
    assert 1 <= ok <= 2 and encrypts <= 2, (ok, encrypts)  # 1/s within a 0.5 s deadline
