"""A throw-away SoftHSM2 installation: its own softhsm2.conf and token directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
LIBRARY = os.environ.get("KMSPLUG_PKCS11_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so")
SO_PIN = "so-pin-0000"


def ensure_installed() -> str | None:
    """None when SoftHSM2 is usable (installing it with apt if need be), else why not."""
    if Path(LIBRARY).exists() and shutil.which("softhsm2-util"):
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return f"{LIBRARY} is absent and apt-get (as root) is not available to install softhsm2"
    result = subprocess.run(
        ["bash", str(HERE / "install-deps.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or not Path(LIBRARY).exists():
        return f"installing softhsm2 failed: {result.stderr.strip()[-500:]}"
    return None


@dataclass
class SoftHsm:
    """Tokens under `root`; SOFTHSM2_CONF must point at `conf` before the library loads."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    def create(self) -> SoftHsm:
        tokens = self.root / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        return self

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf), "KMSPLUG_PKCS11_LIBRARY": LIBRARY}

    def init_token(self, label: str, pin: str) -> None:
        self._run(
            "softhsm2-util", "--init-token", "--free", "--label", label,
            "--so-pin", SO_PIN, "--pin", pin,
        )  # fmt: skip

    def keygen(
        self, token: str, pin: str, label: str, key_id: str = "-", *, encrypt: bool = True
    ) -> None:
        """An AES-256 key made inside the token by python-pkcs11, as an operator would."""
        flags = [] if encrypt else ["--no-encrypt"]
        self._tool("keygen", token, pin, label, key_id, *flags)

    def keygen_like_the_mock(self, token: str, pin: str, label: str) -> None:
        """The reference mock's init container: pkcs11-tool --keygen, no CKA_ID."""
        self._run(
            "pkcs11-tool", "--module", LIBRARY, "--token-label", token, "--login",
            "--pin", pin, "--keygen", "--key-type", "aes:32", "--label", label,
        )  # fmt: skip

    def mock_encrypt(self, token: str, pin: str, label: str, plaintext: bytes) -> bytes:
        """A ciphertext as the kubernetes/kms reference mock plugin writes it."""
        out = self._tool("mock-encrypt", token, pin, label, plaintext.hex())
        return bytes.fromhex(out.strip())

    def _tool(self, *args: str) -> str:
        return self._run(sys.executable, str(HERE / "token_tool.py"), *args)

    def _run(self, *args: str) -> str:
        result = subprocess.run(
            list(args), env=self.env(), capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} {args[1]} failed: {result.stderr.strip()[-800:]}")
        return result.stdout
