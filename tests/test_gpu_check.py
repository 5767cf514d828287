"""scripts/gpu_check.sh --dry-run: every part of the prepared GPU check runs on the CPU at toy sizes (CI)."""
from __future__ import annotations

import json
import subprocess

import pytest

from seqmatch_engine.core.paths import REPO_DIR


@pytest.mark.slow
def test_the_gpu_check_dry_run_completes_every_part(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(tmp_path)], cwd=REPO_DIR,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["dry_run"] and set(results["parts"]) == {"tests", "step", "memory", "run"}
    assert all(part["status"] == "ok" for part in results["parts"].values())
    assert results["parts"]["tests"]["result"]["passed"]
    step = results["parts"]["step"]["result"]
    assert set(step) == {"paper", "cifar10-ipc50"} and all(set(v) == {"reference", "unrolled", "recompute"}
                                                             for v in step.values())
    run = results["parts"]["run"]["result"]
    assert run["seconds_per_iteration"] > 0 and run["seconds_per_expert_epoch"] > 0 and not run["warnings"]
    assert "s per outer iteration" in (tmp_path / "gpu_check.txt").read_text()
