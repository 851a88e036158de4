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

from kmsplug.cli.provider_flags import (
    PROVIDER_SETTINGS,
    provider_environment,
    resilience_policy,
)
from kmsplug.cli.serve import serve
from kmsplug.client import KmsClient
from kmsplug.providers.resilient import ResiliencePolicy
from kmsplug.providers.vault.settings import settings_from_env as vault_settings_from_env

from fakes.alibaba_kms import FakeAlibabaKms
from fakes.alibaba_provider import env_for
from plugin_process import PluginFactory


def resolved(args: list[str], environ: dict[str, str]) -> dict[str, str]:
    """What the providers would read: serve's parameters resolved as at start-up."""
    with serve.make_context("kmsplug serve", list(args)) as ctx:  # click consumes the list
        return provider_environment(ctx.params, environ)


def test_defaults_are_the_resilience_layers() -> None:
    with serve.make_context("kmsplug serve", []) as ctx:
        limits = resilience_policy(ctx.params)
    policy = ResiliencePolicy()
    assert (limits.deadline, limits.rate) == (policy.deadline, policy.rate)


def test_each_flag_lands_in_its_own_field(short_tmp: Path) -> None:
    """Every provider flag, given a distinct value, reaches the settings field it names."""
    from kmsplug.providers.alibaba.settings import settings_from_env as alibaba_settings_from_env
    from kmsplug.providers.aws.settings import settings_from_env as aws_settings_from_env
    from kmsplug.providers.pkcs11.settings import settings_from_env as pkcs11_settings_from_env

    library = short_tmp / "libpkcs11.so"
    library.write_bytes(b"")
    pin_file = short_tmp / "pin"
    pin_file.write_text("1234")
    args = [
        *("--vault-address", "https://vault.test:8200", "--vault-namespace", "ns1"),
        *("--vault-ca-cert", str(pin_file), "--vault-transit-mount", "mnt"),
        *("--vault-transit-key", "key1", "--vault-auth", "approle"),
        *("--vault-auth-mount", "amount", "--vault-token-file", "/t/token"),
        *("--vault-role-id", "rid", "--vault-secret-id-file", "/t/sid"),
        *("--vault-role", "role1", "--vault-jwt-file", "/t/jwt", "--vault-timeout", "1.5"),
        *("--vault-legacy-key-ids", "1,2"),
        *("--aws-key", "alias/k", "--aws-region", "eu-west-3", "--aws-endpoint", "http://e"),
        *("--aws-encryption-context", "a=b", "--aws-timeout", "0.7"),
        *("--aws-legacy-key-ids", "old"),
        *("--pkcs11-library", str(library), "--pkcs11-token", "tok"),
        *("--pkcs11-key-label", "kek", "--pkcs11-key-id", "0a0b"),
        *("--pkcs11-pin-file", str(pin_file), "--pkcs11-mechanism", "aes-key-wrap"),
        *("--pkcs11-sessions", "3"),
        *("--key-id", "alias/ack", "--region", "cn-beijing", "--kms-endpoint", "kms.%s.test"),
        *("--kms-protocol", "http", "--encryption-context", "x=y"),
        *("--alibaba-allow-spec", "Aliyun_SM4", "--alibaba-allow-spec", "Aliyun_AES_128"),
        *("--compat", "ack"),
    ]
    assert {a for a in args if a.startswith("--")} == {s.flag for s in PROVIDER_SETTINGS}
    env = resolved(args, {})
    vault = vault_settings_from_env(env)
    assert (vault.address, vault.namespace, vault.ca_cert) == (
        "https://vault.test:8200",
        "ns1",
        str(pin_file),
    )
    assert (vault.mount, vault.key, vault.auth, vault.auth_mount) == (
        "mnt",
        "key1",
        "approle",
        "amount",
    )
    assert (vault.token_file, vault.role_id, vault.secret_id_file) == ("/t/token", "rid", "/t/sid")
    assert (vault.role, vault.jwt_file, vault.timeout) == ("role1", "/t/jwt", 1.5)
    assert vault.legacy_key_ids == ("1", "2")
    aws = aws_settings_from_env(env)
    assert (aws.key, aws.region, aws.endpoint_url) == ("alias/k", "eu-west-3", "http://e")
    assert (aws.encryption_context, aws.timeout, aws.legacy_key_ids) == ({"a": "b"}, 0.7, ("old",))
    pkcs11 = pkcs11_settings_from_env(env)
    assert (pkcs11.library, pkcs11.token_label, pkcs11.key_label) == (str(library), "tok", "kek")
    assert (pkcs11.key_id_hex, pkcs11.pin_file, pkcs11.mechanism) == (
        "0a0b",
        str(pin_file),
        "aes-key-wrap",
    )
    assert pkcs11.max_sessions == 3
    alibaba = alibaba_settings_from_env(env)
    assert (alibaba.key, alibaba.region, alibaba.host) == (
        "alias/ack",
        "cn-beijing",
        "kms.cn-beijing.test",
    )
    assert (alibaba.protocol, alibaba.encryption_context) == ("http", {"x": "y"})
    assert alibaba.allowed_specs == ("Aliyun_AES_256", "Aliyun_SM4", "Aliyun_AES_128")
    assert alibaba.compat_ack


def test_alibaba_defaults_and_ack_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ack-kms-plugin's environment names; an encryption context given empty is none."""
    from kmsplug.providers.alibaba.settings import settings_from_env as alibaba_settings_from_env

    for name in ("KMSPLUG_REGION", "KMSPLUG_KMS_ENDPOINT", "KMSPLUG_ENCRYPTION_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    environ = {"ACK_KMS_REGION_ID": "cn-shanghai", "ACK_KMS_DOMAIN": "kms.%s.ack"}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    alibaba = alibaba_settings_from_env(resolved(["--key-id", "k"], environ))
    assert (alibaba.region, alibaba.host, alibaba.protocol) == (
        "cn-shanghai",
        "kms.cn-shanghai.ack",
        "https",
    )
    assert alibaba.encryption_context == {"kmsplug": "local-kek"} and not alibaba.compat_ack
    assert alibaba.allowed_specs == ("Aliyun_AES_256",)
    plain = alibaba_settings_from_env(resolved(["--encryption-context", ""], environ))
    assert plain.encryption_context == {} and plain.host == "kms.cn-shanghai.ack"


def test_an_empty_flag_beats_the_environment() -> None:
    env = resolved(["--vault-namespace", ""], {"VAULT_NAMESPACE": "from-env"})
    assert "VAULT_NAMESPACE" not in env and env["KMSPLUG_VAULT_NAMESPACE"] == ""


def test_config_file_text_must_be_quoted(short_tmp: Path) -> None:
    """YAML reads 0102 as the octal number 66: a text setting refuses it, naming it."""
    import click

    for line, problem in (
        ("pkcs11-key-id: 0102", "write it in quotes"),
        ("vault-legacy-key-ids: [a, b]", "not a list"),
        ("aws-encryption-context: {a: b}", "a single value"),
    ):
        config = short_tmp / "kmsplug.yaml"
        config.write_text(line + "\n")
        with pytest.raises(click.BadParameter, match=problem):
            serve.make_context("kmsplug serve", ["--config", str(config)])
    config.write_text("pkcs11-key-id: '0102'\nremote-deadline: 2\ndecrypt-provider: [aws]\n")
    env = resolved(["--config", str(config)], {})
    assert env["KMSPLUG_PKCS11_KEY_ID"] == "0102"


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
    import click

    for args, flag in (
        (["--pkcs11-mechanism", "rot13"], "--pkcs11-mechanism"),
        (["--remote-deadline", "0"], "--remote-deadline"),
        (["--vault-timeout", "soon"], "--vault-timeout"),
    ):
        with pytest.raises(click.BadParameter) as refused:
            serve.make_context("kmsplug serve", args)
        assert f"Invalid value for '{flag}'" in refused.value.format_message()


def test_vault_provider_from_flags_alone(
    plugin_factory: PluginFactory, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything on the command line but the token, which comes from a file; against a
    real OpenBao dev server."""
    from vault.devserver import transit_server

    for name in ("VAULT_ADDR", "VAULT_TOKEN", "KMSPLUG_VAULT_TRANSIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    with transit_server(short_tmp / "bao", key="cluster-a", mount="kms") as bao:
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
    assert seconds < 2.0, seconds  # the default deadline would hold it 2.5 s


def test_remote_rate_caps_calls_to_the_kms(
    plugin_factory: PluginFactory, alibaba: tuple[FakeAlibabaKms, list[str]]
) -> None:
    fake, args = alibaba
    limits = ("--remote-rate", "1", "--remote-deadline", "0.5")
    plugin = plugin_factory(*args, *limits, "--health-probe-interval", "3600")

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
