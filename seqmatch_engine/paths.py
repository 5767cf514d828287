"""Every storage location the project uses, in one place.

A run is a folder under the runs root; expert trajectories are cached under the experts
root keyed by everything that determines them. Both roots default to folders in the
current directory and can be moved with SEQMATCH_HOME.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
ASSETS_DIR = REPO_DIR / "assets"
PRESETS_DIR = ASSETS_DIR / "presets"


def home() -> Path:
    """Folder holding runs/ and experts/ ($SEQMATCH_HOME, default: the current directory)."""
    return Path(os.environ.get("SEQMATCH_HOME", ".")).resolve()


def runs_root(base: Path | None = None) -> Path:
    return (base or home()) / "runs"


def experts_root(base: Path | None = None) -> Path:
    return (base or home()) / "experts"


# Files inside one run folder.
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
SUBSETS_DIR = "subsets"
SNAPSHOTS_DIR = "snapshots"
EXPORT_DIR = "export"


def subset_file(run_dir: Path, stage: int) -> Path:
    """Final learned subset S_{stage+1} (stage is 0-based)."""
    return run_dir / SUBSETS_DIR / f"S{stage + 1}.safetensors"


def snapshot_file(run_dir: Path, stage: int, iteration: int) -> Path:
    return run_dir / SNAPSHOTS_DIR / f"S{stage + 1}_{iteration:06d}.safetensors"
