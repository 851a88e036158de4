"""local-kms (github.com/nsmithuk/local-kms), a real AWS KMS wire protocol, for tests.

`LocalKms(tmp).start()` builds the emulator once (tests/aws/build-local-kms.sh, cached),
runs it with PORT=0 (it picks a free port and logs it) and a data dir under `tmp`, waits
until it answers, and `stop()` kills it by PID. Tests reach it on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

BUILD = Path(__file__).with_name("build-local-kms.sh")
REGION = "eu-west-2"
ACCOUNT = "111122223333"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY": "local-kms-secret"}
_STARTED = re.compile(rb"Local KMS started on [0-9.]*:(\d+)")


def binary() -> Path:
    """The emulator binary (built on first use); skip the test if Go cannot build it."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed: cannot build local-kms")
    done = subprocess.run(
        ["bash", str(BUILD)], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"local-kms did not build: {done.stderr.strip()[-300:]}")
    return Path(done.stdout.strip().splitlines()[-1])


class LocalKms:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp / "local-kms.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> LocalKms:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": "0",
            "KMS_REGION": REGION,
            "KMS_ACCOUNT_ID": ACCOUNT,
            "KMS_DATA_PATH": str(self.tmp / "data"),
            "KMS_SEED_PATH": str(self.tmp / "no-seed.yaml"),
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(binary())], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"local-kms exited: {self.log.read_text()[-500:]}")
            found = _STARTED.search(self.log.read_bytes())
            if found:
                self.port = int(found.group(1))
                try:
                    self.client().list_keys(Limit=1)
                    return self
                except Exception:  # noqa: S110 - not answering yet
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("local-kms did not answer in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def client(self) -> Any:
        """A boto3 KMS client on the emulator, for test set-up."""
        return boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=2),
        )

    def create_key(self, alias: str = "") -> str:
        """A new symmetric key (and alias); returns its ARN."""
        kms = self.client()
        arn = str(kms.create_key()["KeyMetadata"]["Arn"])
        if alias:
            kms.create_alias(AliasName=alias, TargetKeyId=arn)
        return arn
