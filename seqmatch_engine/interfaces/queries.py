"""What the app's views may ask of a home: runs, studies, their diagnostics, exports and imports.

The views read through this module only (.importlinter forbids them the storage, data, orchestration, maths and
diagnostics layers): a `Library` lists and finds folders, a `RunView` or `StudyView` reads one, read-only; what
they hand out (typed records, errors, tensors, figures' inputs) is the vocabulary views and engine share, and is
re-exported here. Work that writes (distil, study, diagnose, delete) goes through the JobManager.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.core.labels import is_soft
from seqmatch_engine.data.imaging import Panel, labelled_panels
from seqmatch_engine.data.prepare import PixelTransform
from seqmatch_engine.diagnostics.features import Embedding
from seqmatch_engine.diagnostics.gradients import mean_off_diagonal
from seqmatch_engine.maths.parallel import single_core
from seqmatch_engine.orchestration.importer import ImportFailed, import_expert_buffer, import_set_files, imported_buffers
from seqmatch_engine.orchestration.run_diagnostics import (
    DiagnosticsOptions,
    format_late_errors,
    load_embedding,
    missing,
    summary,
)
from seqmatch_engine.orchestration.study_eta import StudyEta, study_eta
from seqmatch_engine.orchestration.study_summary import format_table, summarise
from seqmatch_engine.storage import diagnostics_store
from seqmatch_engine.storage.diagnostic_records import G1Record, G2Family, G2Result, G4Result, NetAccuracies
from seqmatch_engine.storage.export import Exported, export_set
from seqmatch_engine.storage.files import StorageError
from seqmatch_engine.storage.ownership import Owner
from seqmatch_engine.storage.records import EvalResult, Message, RunOverview, RunState, RunStatus, StudyStatus
from seqmatch_engine.storage.runs import RunError, RunFolder, Subset, folder_signature, list_runs
from seqmatch_engine.storage.study_folder import StudyFolder, list_studies

__all__ = ["DiagnosticsOptions", "Embedding", "EvalResult", "Exported", "G1Record", "G2Family", "G2Result",
           "G4Result", "ImportFailed", "LearnStudy", "Library", "Message", "NetAccuracies", "Owner", "Panel",
           "PixelTransform", "RunError", "RunOverview", "RunState", "RunStatus", "RunView", "StorageError",
           "StudyEta", "StudyStatus", "StudyView", "Subset", "format_late_errors", "is_soft", "labelled_panels",
           "mean_off_diagonal", "single_core"]

@lru_cache(maxsize=32)
def _display_info(run_path: Path, version: float) -> tuple[PixelTransform, tuple[str, ...]]:
    folder = RunFolder(run_path)
    return folder.transform(), tuple(folder.status().class_names)


class RunView:
    """One run folder, read-only."""

    def __init__(self, folder: RunFolder):
        self._folder = folder
        self.id = folder.id

    def config(self) -> RunConfig:
        return self._folder.config()

    def status(self) -> RunStatus:
        return self._folder.status()

    def overview(self) -> RunOverview:
        return self._folder.overview()

    def owner(self) -> Owner | None:
        """The other process that holds this run now (the CLI, another app), if any."""
        return self._folder.lock().owner()

    def subsets(self) -> list[Subset]:
        return self._folder.subsets()

    def eval(self) -> EvalResult | None:
        return self._folder.eval()

    def evaluations(self) -> dict[str, EvalResult]:
        """Evaluations with other settings than the run's own, by name."""
        return self._folder.evaluations()

    def snapshots(self) -> list[tuple[int, int]]:
        return self._folder.snapshots()

    def snapshot_images(self, stage: int, iteration: int) -> torch.Tensor:
        return self._folder.snapshot_images(stage, iteration)

    def snapshot_labels(self, stage: int, iteration: int) -> torch.Tensor | None:
        return self._folder.snapshot_labels(stage, iteration)

    def display_info(self) -> tuple[PixelTransform, tuple[str, ...]] | None:
        """(the pixel transform to show images with, class names), or None while the run has not loaded its data
        yet; read once per version of its transform file."""
        version = self._folder.transform_version()
        if version is None:
            return None
        try:
            transform, names = _display_info(self._folder.path, version)
        except StorageError:
            return None
        return (transform, names) if names else None

    # -- diagnostics ---------------------------------------------------------------------------------------
    def g1(self) -> list[G1Record]:
        """The G1 records in recording order ([] when none was recorded)."""
        return diagnostics_store.read_g1(self._folder.path)

    def g2(self) -> G2Result | None:
        """The G2 result, None when not computed; StorageError when its file is damaged."""
        return diagnostics_store.read_g2(self._folder.path)

    def g4(self) -> G4Result | None:
        """The G4 result, None when not computed; StorageError when its file is damaged."""
        return diagnostics_store.read_g4(self._folder.path)

    def embedding(self) -> Embedding | None:
        """The cached G3 embedding, or None."""
        return load_embedding(self._folder.path)

    def diagnostics_summary(self) -> dict[str, Any]:
        """Every diagnostic's summary numbers (None where absent)."""
        return summary(self._folder.path)

    def missing_diagnostics(self, reducer: str | None = None, partner: bool = False) -> list[str]:
        return missing(self._folder.path, reducer, partner)

    def export_archive(self) -> tuple[Path, Exported]:
        """A zip of this run's set (safetensors + one PNG grid per subset) in a fresh temporary folder, and what
        it holds: also of an unfinished run (then partial, saying which subsets it holds)."""
        exported = export_set(self._folder, partial=True)
        archive = shutil.make_archive(str(Path(tempfile.mkdtemp()) / f"{self.id}-set"), "zip", exported.folder)
        return Path(archive), exported


@dataclass(frozen=True)
class StudyView:
    """One study folder, read-only."""

    _folder: StudyFolder

    @property
    def id(self) -> str:
        return self._folder.id

    def status(self) -> StudyStatus:
        return self._folder.status()

    def owner(self) -> Owner | None:
        return self._folder.lock().owner()

    def last_activity(self) -> float:
        return self._folder.last_activity()

    def eta(self) -> StudyEta | None:
        """How long the study has left at the pace of the runs it finished itself (None before one prices it)."""
        return study_eta(self._folder)

    def current_run(self) -> tuple[str, RunStatus] | None:
        """The id and status of the run in progress (from the study's status), None between runs or when done."""
        status = self.status()
        run = self._folder.run(status.current) if status.current and status.state == RunState.RUNNING else None
        return (status.current, run.status()) if run else None

    def summary(self) -> tuple[dict[str, Any], str]:
        """(the study's summary, its table), computed from its run folders now."""
        found = summarise(self._folder)
        return found, format_table(found)


@dataclass(frozen=True)
class LearnStudy:
    """A study the Learn tab reports, as shipped under assets/learn/studies/<name>/: findings.md (its first line,
    "# <title>", then what the study shows, in words), summary.md (its table) and its figures (PNG: the Studies tab's
    four in its order, `<study>-accuracy`, `-paired`, `-fair-gain`, `-coupling`, then any others by name)."""

    name: str
    title: str
    findings: str
    table: str | None
    figures: tuple[Path, ...]


STUDY_FIGURE_ORDER = ("accuracy", "paired", "fair-gain", "coupling")  # as the Studies tab lays them out


def _figure_order(figure: Path) -> tuple[int, str]:
    kind = next((i for i, k in enumerate(STUDY_FIGURE_ORDER) if figure.stem.endswith(f"-{k}")), len(STUDY_FIGURE_ORDER))
    return kind, figure.name


def learn_studies() -> list[LearnStudy]:
    """The shipped studies with findings, in name order."""
    root = paths.LEARN_DIR / "studies"
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not (folder / "findings.md").is_file():
            continue
        first, _, rest = (folder / "findings.md").read_text().partition("\n")
        table = folder / "summary.md"
        figures = tuple(sorted(folder.glob("*.png"), key=_figure_order))
        found.append(LearnStudy(folder.name, first.removeprefix("# ").strip() or folder.name, rest.strip(),
                                table.read_text() if table.is_file() else None, figures))
    return found


def learn_pictures() -> list[Path]:
    """The Learn tab's pictures of learned images (assets/learn/*.png), in name order."""
    return sorted(paths.LEARN_DIR.glob("*.png"))


class Library:
    """The run and study folders of one home, as the views see them."""

    def __init__(self, home: Path | None = None):
        self.runs_root = paths.runs_root(home)
        self.studies_root = paths.studies_root(home)
        self.experts_root = paths.experts_root(home)

    def signature(self) -> tuple:
        """Changes when a run or study folder appears, goes or changes: cheap, for deciding to refresh lists."""
        return folder_signature(self.runs_root) + folder_signature(self.studies_root)

    def runs(self) -> list[RunView]:
        """Every run folder, newest first."""
        return [RunView(folder) for folder in list_runs(self.runs_root)]

    def run(self, run_id: object) -> RunView:
        """The run of an untrusted id from a request (refused if it leaves the runs root)."""
        if not run_id:
            raise RunError("pick a run first")
        return RunView(RunFolder.find(self.runs_root, run_id))

    def studies(self) -> list[str]:
        return [study.id for study in list_studies(self.studies_root)]

    def study(self, study_id: object) -> StudyView:
        """The study of an untrusted id from a request (refused if it leaves the studies root)."""
        if not study_id:
            raise RunError("pick a study first")
        return StudyView(StudyFolder.find(self.studies_root, study_id))

    # -- bringing public files in --------------------------------------------------------------------------
    def expert_buffers(self) -> list[dict[str, Any]]:
        """The imported expert buffers: name, experts, epochs, params, folder."""
        return imported_buffers(self.experts_root)

    def import_experts(self, path: Path) -> tuple[Path, int, int, int]:
        """A public MTT expert buffer into the experts cache: (folder, experts, epochs, parameters)."""
        return import_expert_buffer(path, self.experts_root)

    def import_set(self, files: list[Path], dataset: str, zca: bool) -> RunView:
        """A distilled set as a finished run folder: this tool's export, or the public code's images, labels and lr
        files (of `dataset`, distilled with `zca` or not)."""
        return RunView(import_set_files(files, dataset, zca, self.runs_root))
