"""ECS RAM-role credentials, end to end, inside a loopback-only network namespace.

Run ONLY under `unshare -n` (test_ecs_role.py does): it puts 100.100.100.200 on the
namespace's own `lo`, serves a fake ECS instance-metadata service there (IMDSv2 token,
role discovery, STS credentials issued by the fake KMS), and checks that the Alibaba
provider, given no credentials at all, finds them and uses them. Nothing leaves the
namespace: it has no interface but `lo`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS.parent / "python")]

from kmsplug.providers.alibaba.kek import build  # noqa: E402
from kmsplug.providers.alibaba.settings import AlibabaSettings  # noqa: E402
from kmsplug.providers.resilient import Resilient  # noqa: E402

from fakes.alibaba_kms import FakeAlibabaKms  # noqa: E402

METADATA_IP = "100.100.100.200"
ROLE = "kmsplug-node-role"


def isolated() -> bool:
    """True only in a namespace whose sole interface is loopback."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]


def main() -> None:
    if not isolated():
        sys.exit("refusing to run: not in a loopback-only network namespace")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{METADATA_IP}/32", "dev", "lo"], check=True)
    fake = FakeAlibabaKms().start()
    key = fake.create_key()
    sts = fake.issue_sts_token()
    seen: list[str] = []

    class Metadata(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:  # IMDSv2: a session token first
            seen.append(f"PUT {self.path}")
            ok = self.path == "/latest/api/token"
            self._send(200 if ok else 404, b"imds-token" if ok else b"")

        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            if self.headers.get("X-aliyun-ecs-metadata-token") != "imds-token":
                self._send(401, b"")
            elif self.path == "/latest/meta-data/ram/security-credentials/":
                self._send(200, ROLE.encode())
            elif self.path == f"/latest/meta-data/ram/security-credentials/{ROLE}":
                body = {
                    "Code": "Success",
                    "AccessKeyId": sts.access_key_id,
                    "AccessKeySecret": sts.access_key_secret,
                    "SecurityToken": sts.security_token,
                    "Expiration": sts.expiration_iso,
                    "LastUpdated": sts.expiration_iso,
                }
                self._send(200, json.dumps(body).encode())
            else:
                self._send(404, b"")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((METADATA_IP, 80), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = AlibabaSettings(key=key, region=fake.region, endpoint=fake.host, protocol="http")
        kek = Resilient(build(settings, env={}))  # no credentials given: ECS role it is

        async def use() -> list[str]:
            lines = await kek.preflight()
            assert await kek.unwrap(await kek.wrap(b"k" * 32)) == b"k" * 32
            return lines

        lines = anyio.run(use)
        print(json.dumps({"ok": True, "preflight": lines, "metadata_requests": seen}))
    finally:
        server.shutdown()
        server.server_close()
        fake.stop()


if __name__ == "__main__":
    main()
