"""A study on disk: `StudyFolder` is the only code that reads or writes a study folder.

    studies/<id>/study.json        the spec (StudySpec) and the base config it expands
                 status.json       state, the run in progress, runs done / total
                 experts.json      test accuracy of each seed's stage-1 experts (the headroom)
                 runs/ipc020-k2-seqmatch-seed1/ ...   ordinary run folders (RunFolder)
                 summary.json, summary.md          the table, rebuilt from the runs after each one

An archive (`archive`) is a study folder too, holding the spec, experts.json, the summary and the finished runs'
records (no checkpoints, snapshots or exports): small enough to keep in the repository, so that a study outlives
the machine it ran on; `restore_from` copies its runs into a home's study of the same spec.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import ConfigError
from seqmatch_engine.core.study_spec import StudySpec, same_run
from seqmatch_engine.storage.files import StorageError, read_json, write_json, write_text
from seqmatch_engine.storage.ownership import OwnerLock
from seqmatch_engine.storage.records import RunState, StudyStatus
from seqmatch_engine.storage.runs import RunError, RunFolder, find_folder, place_folder


class StudyFolder:
    """One study on disk (the only code that reads or writes a study folder)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def existing(cls, root: Path, spec: StudySpec) -> "StudyFolder | None":
        """studies/<spec.name>/ when it holds this spec, None when there is no such study; ConfigError when it
        holds another spec."""
        study = cls(paths.child(root, spec.name, "study"))
        if not (study.path / paths.STUDY_FILE).is_file():
            return None
        if not study.holds(spec):
            raise ConfigError(f"study {spec.name!r} exists in {study.path} with another spec; give the study another "
                              f"name, or delete that folder to start it over")
        return study

    @classmethod
    def create_or_open(cls, root: Path, spec: StudySpec) -> "StudyFolder":
        """studies/<spec.name>/, created whole with the spec (runs.place_folder), or reopened when it holds the
        same spec (also when another process has just created it)."""
        study = cls.existing(root, spec)
        if study is not None:
            return study

        def fill(folder: Path) -> None:
            write_json(folder / paths.STUDY_FILE, spec.to_dict())
            cls(folder).update_status(state=RunState.CREATED, done=0, total=spec.run_count(), created=time.time())

        Path(root).mkdir(parents=True, exist_ok=True)
        try:
            return cls(place_folder(Path(root), [spec.name], fill, "study"))
        except RunError:
            study = cls.existing(root, spec)
            if study is None:
                raise
            return study

    @classmethod
    def find(cls, root: Path, study_id: object) -> "StudyFolder":
        return cls(find_folder(root, study_id, "study", paths.STUDY_FILE))

    @property
    def id(self) -> str:
        return self.path.name

    def lock(self) -> OwnerLock:
        """The study's owner lock, held by the process that runs it (the CLI or an app's queue)."""
        return OwnerLock(self.path / paths.LOCK_FILE, f"study {self.id}",
                         "Let it run there or stop it (Stop in its app's Studies tab, Ctrl-C in its terminal); a "
                         "killed owner frees the study at once. To continue it as soon as it is free, run the same "
                         "command with --wait")

    @property
    def runs_root(self) -> Path:
        return self.path / paths.STUDY_RUNS_DIR

    def spec(self) -> StudySpec:
        return StudySpec.from_dict(read_json(self.path / paths.STUDY_FILE))

    def status(self) -> StudyStatus:
        path = self.path / paths.STUDY_STATUS_FILE
        try:
            return StudyStatus.from_dict(read_json(path)) if path.exists() else StudyStatus()
        except (ValueError, TypeError) as error:
            raise StorageError(f"{path} cannot be read ({error}). Delete it: starting the study again rewrites "
                               f"it, and its finished runs are kept") from None

    def update_status(self, **changes: Any) -> None:
        """Set fields of the study's status.json (StudyStatus's)."""
        status = self.status().replaced(**changes, updated=time.time())
        write_json(self.path / paths.STUDY_STATUS_FILE, status.to_dict())

    def last_activity(self) -> float:
        """When the study or its run in progress last wrote a file (a time stamp)."""
        files = [self.path / paths.STUDY_STATUS_FILE]
        current = self.status().current
        if current and self.run(current):
            files += [self.run(current).path / name for name in (paths.STATUS_FILE, paths.METRICS_FILE)]
        return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)

    def run(self, rid: str) -> RunFolder | None:
        path = self.runs_root / rid
        return RunFolder(path) if (path / paths.CONFIG_FILE).is_file() else None

    def holds(self, spec: StudySpec) -> bool:
        """Whether this folder's spec is `spec`."""
        return self.spec().to_dict() == spec.to_dict()

    def runs(self) -> Iterator[RunFolder]:
        """The study's run folders, in name order."""
        for path in sorted(self.runs_root.iterdir()) if self.runs_root.is_dir() else ():
            if (run := self.run(path.name)) is not None:
                yield run

    def archive(self, target: Path) -> list[str]:
        """Write the study's record to the folder `target`, replacing an earlier archive of this study there: the
        spec, the experts' accuracy, the summary and each finished run's record (RunFolder.archive_to). Built aside
        and renamed into place, so an interrupted archive leaves the earlier one whole. Returns the archived run ids;
        StorageError when `target` is another folder (not an archive of this study)."""
        target = Path(target).resolve()
        if target.is_relative_to(self.path.resolve()) or self.path.resolve().is_relative_to(target):
            raise StorageError(f"cannot archive study {self.id} into {target}: it overlaps the study's own folder; "
                               f"give a folder outside it")
        if target.exists() and not target.is_dir():
            raise StorageError(f"{target} is a file; give a new or empty folder for the archive")
        if target.exists() and any(target.iterdir()):
            if not (target / paths.STUDY_FILE).is_file():
                raise StorageError(f"{target} exists and is no study archive; give a new or empty folder (an "
                                   f"archive there would replace what it holds)")
            if not StudyFolder(target).holds(self.spec()):
                raise StorageError(f"{target} holds the archive of another study spec; give another folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.archiving-", dir=target.parent))
        try:
            for name in (paths.STUDY_FILE, paths.STUDY_EXPERTS_FILE, paths.STUDY_SUMMARY_FILE, paths.STUDY_TABLE_FILE):
                if (self.path / name).is_file():
                    shutil.copyfile(self.path / name, scratch / name)
            archived = []
            for run in self.runs():
                if run.finished():
                    run.archive_to(scratch / paths.STUDY_RUNS_DIR / run.id)
                    archived.append(run.id)
            if target.exists():
                os.rename(target, scratch / ".replaced")  # an empty folder or the earlier archive, removed below
            os.rename(scratch, target)
            shutil.rmtree(target / ".replaced", ignore_errors=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return archived

    def restore_from(self, archive: "StudyFolder") -> tuple[list[str], list[str]]:
        """Copy into this study each finished run of `archive` (a folder `archive` wrote, of this study's spec) that
        it lacks, and the experts' accuracy of the seeds it lacks. Only a run under an id of this study's spec, with
        that run's config, is taken. Returns (restored run ids, archived run ids left out, each with why)."""
        if not (archive.path / paths.STUDY_FILE).is_file():
            raise StorageError(f"{archive.path} holds no archived study (no {paths.STUDY_FILE}): give the folder that "
                               f"`study --archive` wrote")
        spec = self.spec()
        if not archive.holds(spec):
            raise ConfigError(f"{archive.path} is the archive of another study spec than {self.id}'s; restore it "
                              f"into a study of its own spec")
        planned = {run.id: run for run in spec.every_run()}
        restored, left_out = [], []
        for run in archive.runs():
            plan = planned.get(run.id)
            if self.run(run.id) is not None:
                continue
            try:
                taken = plan is not None and run.finished() and same_run(
                    run.config(), spec.run_config(plan.cell, plan.seed, plan.method, plan.lr_img))
            except (ConfigError, StorageError, RunError, ValueError):
                taken = False
            if not taken:
                left_out.append(f"{run.id} (not finished, damaged, or not a run of this spec)")
                continue
            RunFolder.copy_of(run, self.runs_root, run.id, run.config())
            restored.append(run.id)
        mine, seeds = self.expert_accuracy(), {str(run.seed) for run in planned.values()}
        for seed, values in archive.expert_accuracy().items():
            if seed in seeds and seed not in mine and isinstance(values, list) and all(
                    isinstance(v, float) and math.isfinite(v) for v in values):
                self.save_expert_accuracy(int(seed), values)
        return restored, left_out

    def expert_accuracy(self) -> dict[str, Any]:
        path = self.path / paths.STUDY_EXPERTS_FILE
        return read_json(path) if path.exists() else {}

    def save_expert_accuracy(self, seed: int, values: list[float]) -> None:
        write_json(self.path / paths.STUDY_EXPERTS_FILE, {**self.expert_accuracy(), str(seed): values})

    def save_summary(self, summary: dict[str, Any], table: str) -> None:
        write_json(self.path / paths.STUDY_SUMMARY_FILE, summary)
        write_text(self.path / paths.STUDY_TABLE_FILE, table)

    def summary(self) -> dict[str, Any] | None:
        path = self.path / paths.STUDY_SUMMARY_FILE
        return read_json(path) if path.exists() else None


def list_studies(root: Path) -> list[StudyFolder]:
    root = Path(root)
    if not root.exists():
        return []
    return sorted((StudyFolder(p) for p in root.iterdir() if not p.name.startswith(".") and paths.inside(root, p)
                   and (p / paths.STUDY_FILE).is_file()), key=lambda s: s.id)
