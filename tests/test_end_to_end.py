"""The cpu-demo preset end to end through the CLI: experts -> SeqMatch K=2 -> evaluation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_demo_preset_end_to_end(demo_home):
    done = subprocess.run([sys.executable, "-m", "seqmatch_engine", "--home", str(demo_home), "distill",
                           "--preset", "cpu-demo"], cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "synthetic" in done.stdout and "random_real" in done.stdout
    run = next(p for p in (demo_home / "runs").iterdir() if "seqmatch-cpu-demo" in p.name
               and (p / "eval.json").exists())
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done"
    result = json.loads((run / "eval.json").read_text())
    assert result["method"] == "seqmatch" and result["ipc"] == 10 and len(result["lrs"]) == 2
    synthetic = result["synthetic"]["convnet"]
    baseline = result["random_real"]["convnet"]
    num_nets = json.loads((run / "config.json").read_text())["eval"]["num_nets"]
    assert len(synthetic["values"]) == num_nets == 5 and all(0.1 < v <= 1.0 for v in synthetic["values"])
    # Distillation must at least not lose to random real images of the same budget.
    assert synthetic["mean"] > baseline["mean"], (synthetic, baseline)
    assert sorted(p.name for p in (run / "subsets").iterdir()) == ["S1.safetensors", "S2.safetensors"]
    assert (demo_home / "experts").is_dir() and len(list((demo_home / "experts").iterdir())) >= 2
