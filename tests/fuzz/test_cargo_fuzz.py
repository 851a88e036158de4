"""Bounded libFuzzer runs of the Rust core (cargo-fuzz): parser and open path.

cargo-fuzz needs a nightly toolchain; machines of this kind ship one (`make fuzz-deps`
installs cargo-fuzz). Without nightly the test is skipped, saying so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "rust" / "kmsplug-core"


def _nightly() -> bool:
    probe = subprocess.run(
        ["rustup", "run", "nightly", "rustc", "--version"], capture_output=True, check=False
    )
    return probe.returncode == 0 and shutil.which("cargo-fuzz") is not None


@pytest.mark.skipif(
    shutil.which("rustup") is None or not _nightly(), reason="no nightly/cargo-fuzz"
)
@pytest.mark.parametrize("target", ["parse", "open"])
@pytest.mark.timeout(1000)  # the subprocess's own bound (a cold instrumented build) and more
def test_cargo_fuzz_bounded(target: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "cargo", "+nightly", "fuzz", "run", target,
            str(tmp_path), str(CORE / "fuzz" / "corpus" / target),
            "--", "-runs=200000", "-max_total_time=60", f"-artifact_prefix={tmp_path}/",
        ],
        cwd=CORE,
        capture_output=True,
        text=True,
        timeout=900,  # the first build of the instrumented crate takes minutes
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
