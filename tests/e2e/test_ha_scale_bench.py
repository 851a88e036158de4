"""benches/scale_bench.py end to end, small: what its published figures rest on.

Every step lists back exactly the Secrets written, before and after the apiserver
restart; kmsplug makes no KMS call for a write or a restart (its local KEK hierarchy), v1
or v2; its memory does not grow with the Secrets; the three-node cold start lists every
Secret; the report and plots are written. The real run (1,000 to 50,000 Secrets) is
`make bench-scale`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_small_scale_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "scale"
    small = ["--counts", "100,300", "--v1-max", "300", "--v1-cachesize", "300"]
    small += ["--ha-count", "300", "--clients", "4", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "scale_bench.py"), *small],
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "scale.json").read_text())
    cases = {case["case"]: case["steps"] for case in results["cases"]}
    assert set(cases) == {"aesgcm", "kmsplug-v2", "kmsplug-v1"}
    for case, steps in cases.items():
        assert [step["count"] for step in steps] == [100, 300], case
        for step in steps:
            assert step["create_errors"] == {} and step["create_per_s"] > 0
            assert step["cache_fill_s"] is not None and step["restart_ready_s"] > 0
            if case != "aesgcm":
                assert step["kms_calls_create"] == step["kms_calls_restart"] == 0, step
                assert step["kmsplug_rss_mib"] and step["kmsplug_cpu_s"] >= 0
    rss = [step["kmsplug_rss_mib"] for step in cases["kmsplug-v2"]]
    assert max(rss) < 1.5 * min(rss)  # held KEKs, not per-Secret state
    ha = results["ha"]
    assert ha["listed"] == ha["count"] == 300 and ha["all_ready_s"] > 0
    assert set(ha["ready_s"]) == {"a", "b", "c"}
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "| kmsplug-v1 | 300 |" in report
    for png in ("scale-cache-fill.png", "scale-cold-list.png", "scale-create.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
