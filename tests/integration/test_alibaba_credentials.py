"""Alibaba credential sources beyond a static AccessKey, against loopback fakes.

The ECS instance-metadata source is in tests/netns (it needs its own network namespace).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest

from kmsplug.providers.resilient import ResiliencePolicy

from fakes.alibaba_kms import FakeAlibabaKms, StsCredential
from fakes.alibaba_provider import provider

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> Iterator[FakeAlibabaKms]:
    kms = FakeAlibabaKms().start()
    yield kms
    kms.stop()


@contextlib.contextmanager
def credentials_uri(issue: Callable[[], StsCredential]) -> Iterator[tuple[str, list[str]]]:
    """A loopback ALIBABA_CLOUD_CREDENTIALS_URI endpoint: (its URI, the paths it served).

    Each request gets the credentials `issue()` returns, in the format the SDK expects.
    """
    served: list[str] = []

    class Credentials(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.path)
            sts = issue()
            body = json.dumps(
                {
                    "Code": "Success",
                    "AccessKeyId": sts.access_key_id,
                    "AccessKeySecret": sts.access_key_secret,
                    "SecurityToken": sts.security_token,
                    "Expiration": sts.expiration_iso,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Credentials)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/creds", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_credentials_uri_source(fake: FakeAlibabaKms) -> None:
    """ALIBABA_CLOUD_CREDENTIALS_URI: a loopback endpoint hands out STS credentials."""
    key = fake.create_key()
    sts = fake.issue_sts_token()
    with credentials_uri(lambda: sts) as (uri, served):
        kek = provider(fake, key, {"ALIBABA_CLOUD_CREDENTIALS_URI": uri})
        await kek.preflight()
        assert served
        fetched = len(served)
        await kek.reload_credentials()  # what SIGHUP does: a new chain, fetched again
        await kek.wrap(b"k" * 32)
        assert len(served) > fetched


async def test_oidc_role_credentials(
    fake: FakeAlibabaKms, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RRSA: the OIDC token file is exchanged at STS (a loopback HTTPS fake) for STS keys."""
    import datetime as dt
    import ipaddress
    import json
    import ssl
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import certifi
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = fake.create_key()
    sts = fake.issue_sts_token()
    token_file = short_tmp / "oidc-token"
    token_file.write_text("eyJ.oidc.token")
    tls_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-sts")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(tls_key, hashes.SHA256())
    )
    cert_file, key_file = short_tmp / "sts.crt", short_tmp / "sts.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    exchanges: list[dict[str, str]] = []

    class Sts(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            exchanges.append(query)
            good = (
                query.get("Action") == "AssumeRoleWithOIDC"
                and query.get("OIDCToken") == "eyJ.oidc.token"
                and query.get("RoleArn") == "acs:ram::1:role/kmsplug"
            )
            body = json.dumps(
                {
                    "RequestId": "sts-1",
                    "Credentials": {
                        "AccessKeyId": sts.access_key_id,
                        "AccessKeySecret": sts.access_key_secret,
                        "SecurityToken": sts.security_token,
                        "Expiration": sts.expiration_iso,
                    },
                }
                if good
                else {"Code": "InvalidParameter.OIDCToken"}
            ).encode()
            self.send_response(200 if good else 400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Sts)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The SDK trusts certifi's bundle only: add the fake STS's certificate to a copy.
    bundle = short_tmp / "bundle.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + cert_file.read_bytes())
    monkeypatch.setattr(certifi, "where", lambda: str(bundle))
    try:
        env = {
            "ALIBABA_CLOUD_ROLE_ARN": "acs:ram::1:role/kmsplug",
            "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": "acs:ram::1:oidc-provider/ack-rrsa",
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE": str(token_file),
            "ALIBABA_CLOUD_STS_ENDPOINT": f"127.0.0.1:{server.server_port}",
        }
        kek = provider(fake, key, env)
        await kek.preflight()
        assert exchanges and exchanges[0]["OIDCProviderArn"] == "acs:ram::1:oidc-provider/ack-rrsa"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_credential_refresh_never_drops_calls(fake: FakeAlibabaKms) -> None:
    """Short-lived STS credentials from a URI are replaced while calls keep flowing.

    Calls go on until the first credentials have expired and 100 wrap+unwrap pairs are
    done (a count, not a rate: a loaded machine is slower, not wrong), bounded in time.
    The remote deadline is raised from the apiserver-facing 2.5 s (tests/faults holds
    that one): the fake KMS, the credentials endpoint and the SDK's threads all share
    this process's GIL, and on a loaded machine a call missed 2.5 s with no credential
    in sight. A call refused for its credentials is retried within the deadline; one
    that still fails is a failure here.
    """
    key = fake.create_key()
    issued: list[StsCredential] = []

    def short_lived() -> StsCredential:
        sts = fake.issue_sts_token(ttl=3)  # expires within the test: must be refreshed
        issued.append(sts)
        return sts

    failures: list[str] = []
    done = 0
    last_success = 0.0  # wall clock, as the credentials' expiry is
    with credentials_uri(short_lived) as (uri, _):
        kek = provider(
            fake, key, {"ALIBABA_CLOUD_CREDENTIALS_URI": uri}, ResiliencePolicy(deadline=20)
        )
        give_up = anyio.current_time() + 60  # only a hang gets here

        def go_on() -> bool:
            outlived_first = bool(issued) and last_success > issued[0].expiration + 1
            return anyio.current_time() < give_up and not (outlived_first and done >= 100)

        async def caller() -> None:
            nonlocal done, last_success
            while go_on():
                try:
                    assert await kek.unwrap(await kek.wrap(b"k" * 32)) == b"k" * 32
                    done += 1
                    last_success = time.time()
                except Exception as exc:
                    failures.append(f"{exc!r} <- {exc.__cause__!r}")
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tasks:
            for _ in range(8):
                tasks.start_soon(caller)
    expired = fake.count(outcome="InvalidSecurityToken.Expired")
    print(f"{done} wrap+unwrap pairs, {len(issued)} credentials, {expired} expired-token retries")
    assert failures == []
    assert done >= 100, f"only {done} wrap+unwrap pairs in 60 s"
    assert last_success > issued[0].expiration + 1  # calls went on past the first expiry
    assert len({sts.access_key_id for sts in issued}) >= 2  # really replaced mid-run
