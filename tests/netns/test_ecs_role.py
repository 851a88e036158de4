"""Credential code that talks to instance metadata runs only in its own network namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_ecs_ram_role_credentials_from_instance_metadata() -> None:
    result = subprocess.run(
        ["unshare", "--net", "--", sys.executable, str(HERE / "ecs_metadata_check.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"]
    assert "PUT /latest/api/token" in report["metadata_requests"]
    assert any(r.endswith("kmsplug-node-role") for r in report["metadata_requests"])
