"""A bounded fuzz run on every `make test`; `make fuzz` runs the same harness for longer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_decrypt_path_survives_bounded_fuzzing(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(HERE / "fuzz_decrypt.py"),
            str(tmp_path),  # new inputs land here, not in the checked-in corpus
            str(HERE / "corpus"),
            "-runs=30000",
            "-max_total_time=120",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DONE" in result.stderr or "Done" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
