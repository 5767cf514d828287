"""Every storage location the project uses, in one place.

A run is a folder under the runs root; expert trajectories are cached under the experts
root keyed by everything that determines them. Both roots default to folders in the
current directory and can be moved with SEQMATCH_HOME. The demo presets' stage-1 experts
ship read-only in SHIPPED_EXPERTS_DIR.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = PACKAGE_DIR.parent
ASSETS_DIR = REPO_DIR / "assets"
PRESETS_DIR = ASSETS_DIR / "presets"
SHIPPED_EXPERTS_DIR = ASSETS_DIR / "experts"  # never written at run time (scripts/make_demo_experts.py)
LEARN_DIR = ASSETS_DIR / "learn"  # the Learn tab's pictures and studies/<name>/ (findings, table, figures)


def home() -> Path:
    """Folder holding runs/ and experts/ ($SEQMATCH_HOME, default: the current directory)."""
    return Path(os.environ.get("SEQMATCH_HOME", ".")).resolve()


class UnsafeName(ValueError):
    """A name from a request or the command line that would leave its root folder."""


def child(root: Path, name: object, what: str = "run") -> Path:
    """`root/name` for an untrusted `name` (a run, study or expert id from a request or the command line).

    The name must be one plain folder name (no '/', '\\', '..', NUL or control characters) whose
    path, with symbolic links resolved, lies directly inside `root`; anything else raises UnsafeName.
    """
    root = Path(root).resolve()
    shown = repr(name)[:80]
    refused = UnsafeName(f"{what} id {shown} is refused: an id is one folder name inside {root} "
                         f"(no '/', '\\', '..' or control characters); pick a {what} from the list")
    if not isinstance(name, str) or not name or len(name) > 255 or name in (".", ".."):
        raise refused
    if any(ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise refused
    path = root / name
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unrepresentable name
        raise refused from None
    if resolved.parent != root:
        if path.is_symlink():
            raise UnsafeName(f"{what} {shown} is refused: it is a symbolic link to {resolved}, outside {root}, and a "
                             f"{what} is a folder inside it; remove the link, or move that folder into {root}")
        raise refused
    return path


def inside(root: Path, entry: Path) -> bool:
    """Whether `entry` (an entry of `root`), with symbolic links resolved, lies directly inside `root`."""
    try:
        return entry.resolve().parent == Path(root).resolve()
    except (OSError, RuntimeError):
        return False


def runs_root(base: Path | None = None) -> Path:
    return (base or home()) / "runs"


def experts_root(base: Path | None = None) -> Path:
    return (base or home()) / "experts"


def shipped_experts_file(preset: str) -> Path:
    """The shipped stage-1 experts of `preset` (expert_cache.py reads them, scripts/make_demo_experts.py writes)."""
    return SHIPPED_EXPERTS_DIR / f"{preset}.safetensors"


def studies_root(base: Path | None = None) -> Path:
    return (base or home()) / "studies"


def study_archive(name: str) -> Path:
    """Where `study --archive` keeps a study's finished runs by default, in the repository beside its findings
    (LEARN_DIR/studies/<name>/archive), so that a later machine goes on from them (`study --restore`)."""
    return child(LEARN_DIR / "studies", name, "study") / "archive"


def queue_lock(base: Path | None = None) -> Path:
    """The lock that app processes on one home hold while their queue runs a job (one job at a time for all)."""
    return (base or home()) / "app-queue.lock"


# Files inside one run folder.
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
TRANSFORM_FILE = "transform.safetensors"
SUBSETS_DIR = "subsets"
SNAPSHOTS_DIR = "snapshots"
EXPORT_DIR = "export"
CONTROLS_FILE = "controls.json"
EVALUATIONS_DIR = "evaluations"   # evaluations with other settings than the run's own (evaluate --epochs ...)
LOCK_FILE = "owner.lock"          # held (fcntl.flock) by the process that trains the run or runs the study
ORIGIN_FILE = "origin.json"       # a run copied from another study: the folder it was copied from

# Files inside one study folder (studies/<id>/): its spec, progress, summary and its runs.
STUDY_FILE = "study.json"
STUDY_STATUS_FILE = "status.json"
STUDY_SUMMARY_FILE = "summary.json"
STUDY_TABLE_FILE = "summary.md"
STUDY_EXPERTS_FILE = "experts.json"
STUDY_RUNS_DIR = "runs"


def subset_file(run_dir: Path, stage: int) -> Path:
    """Final learned subset S_{stage+1} (stage is 0-based)."""
    return run_dir / SUBSETS_DIR / f"S{stage + 1}.safetensors"


def snapshot_file(run_dir: Path, stage: int, iteration: int) -> Path:
    return run_dir / SNAPSHOTS_DIR / f"S{stage + 1}_{iteration:06d}.safetensors"
