"""A run is a folder on disk; `RunFolder` is the only code that reads or writes one.

    runs/<id>/config.json       validated RunConfig
              status.json       phase, stage, iteration, state (running/done/failed/stopped), messages
              metrics.jsonl     one record per outer iteration / evaluation
              transform.safetensors   normalisation (+ZCA) for turning model inputs into pixels
              checkpoint.safetensors  everything needed to resume the current stage
              subsets/S<k>.safetensors  finished subsets: images, labels, lr
              snapshots/S<k>_<it>.safetensors  timeline of images and lr
              eval.json         final accuracies (records.py holds the typed contents of these files)
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.data.prepare import PixelTransform
from seqmatch_engine.storage.files import (
    StorageError,
    append_jsonl,
    check_tensor_file,
    read_json,
    read_jsonl,
    read_tensors,
    write_bytes,
    write_json,
    write_jsonl,
    write_tensors,
)
from seqmatch_engine.storage.ownership import OwnerLock
from seqmatch_engine.storage.records import (
    Checkpoint,
    EvalResult,
    Message,
    MetricRecord,
    RunOverview,
    RunState,
    RunStatus,
    SelectionRecord,
    metric_from_dict,
    metric_to_dict,
)


def find_folder(root: Path, name: object, what: str, marker: str) -> Path:
    """root/name for an untrusted `name` that must resolve inside `root` and hold `marker`; RunError otherwise."""
    try:
        path = paths.child(root, name, what)
    except paths.UnsafeName as error:
        raise RunError(str(error)) from None
    if not (path / marker).is_file():
        raise RunError(f"no {what} {name!r} in {Path(root).resolve()}: it was deleted or never existed; "
                       f"refresh the list of {what}s")
    return path


_SUBSET_WAY_OUT = "Delete it and every later subset file, then resume the run: those subsets are learned again"


class RunError(ValueError):
    """A run folder is missing, foreign or incomplete."""


@dataclass(frozen=True)
class Subset:
    """A learned subset S_k: images (n, C, H, W) as model inputs, labels (class indices (n,) or soft logits (n, C)),
    its lr."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-")[:40]


def place_folder(root: Path, names: list[str], fill: Callable[[Path], None], what: str) -> Path:
    """A new folder root/<the first free name of `names`>, filled by `fill` in a hidden scratch folder and renamed
    into place whole, so that nobody ever sees it half-made and two processes creating one name never both win.
    RunError when every name is taken."""
    scratch = Path(tempfile.mkdtemp(prefix=".creating-", dir=root))
    try:
        fill(scratch)
        for name in names:
            path = paths.child(root, name, what)
            try:
                os.rename(scratch, path)  # replaces an empty folder; fails on a non-empty one
                return path
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if len(names) == 1:
        raise RunError(f"{root / names[0]} exists but is not a {what} folder (or another process has just made it "
                       f"one): move it away or delete it, then try again")
    raise RunError(f"{root} already holds {len(names)} folders named {names[0]}*; delete some")


LEFT_OUT_OF_ARCHIVES = (paths.CHECKPOINT_FILE, paths.SNAPSHOTS_DIR, paths.EXPORT_DIR)  # RunFolder.archive_to


def copy_files(source: Path, target: Path, left_out: tuple[str, ...] = ()) -> None:
    """Copy the folder `source` into `target` but for the names in `left_out`, the owner lock, files being written
    (*.tmp) and symbolic links (a folder from elsewhere may hold a link to a file that is not its own)."""
    def ignored(folder: str, names: list[str]) -> set[str]:
        return {name for name in names if name in left_out or name == paths.LOCK_FILE or name.endswith(".tmp")
                or os.path.islink(os.path.join(folder, name))}
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=ignored)


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- creation and discovery -------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, config: RunConfig, run_id: str | None = None) -> "RunFolder":
        """A new run folder holding the config and a 'created' status, named `run_id` (which must not
        exist yet) or <time>-<method>-<name>."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = "-".join(p for p in (stamp, config.method, _slug(config.name)) if p)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        names = [run_id] if run_id is not None else [base] + [f"{base}-{n}" for n in range(1, 1000)]

        def fill(folder: Path) -> None:
            write_json(folder / paths.CONFIG_FILE, config.to_dict())
            cls(folder).update_status(state=RunState.CREATED, phase="queued", created=time.time())

        return cls(place_folder(root, names, fill, "run"))

    @classmethod
    def copy_of(cls, source: "RunFolder", root: Path, run_id: str, config: RunConfig) -> "RunFolder":
        """A finished run copied whole under root/`run_id` with `config` (the same run as the source's but for its
        name, which names the study it belongs to), and origin.json naming the folder it was copied from."""
        if not source.finished():
            raise RunError(f"{source.path} is not a finished run (only those are copied)")

        def fill(folder: Path) -> None:
            copy_files(source.path, folder)
            write_json(folder / paths.CONFIG_FILE, config.to_dict())
            write_json(folder / paths.ORIGIN_FILE, {"copied_from": str(source.path.resolve()), "copied": time.time()})

        Path(root).mkdir(parents=True, exist_ok=True)
        return cls(place_folder(Path(root), [run_id], fill, "run"))

    @classmethod
    def find(cls, root: Path, run_id: object) -> "RunFolder":
        """The run `run_id` (an untrusted id from a request) under `root`; refuses ids that leave it."""
        return cls(find_folder(root, run_id, "run", paths.CONFIG_FILE))

    @classmethod
    def from_argument(cls, root: Path, argument: str) -> "RunFolder":
        """The run a command-line argument names: an id, or the path of a folder directly inside `root`."""
        given = Path(argument)
        if len(given.parts) > 1 or given.is_absolute():
            resolved = given.resolve()
            if resolved.parent != Path(root).resolve():
                raise RunError(f"{resolved} is not a run folder of {Path(root).resolve()}: runs live directly "
                               f"in that folder (pass --home to use another one)")
            argument = resolved.name
        return cls.find(root, argument)

    def _require_folder(self) -> None:
        """Writes go to an existing run only: a folder deleted while a run used it is not recreated half-empty."""
        if not (self.path / paths.CONFIG_FILE).is_file():
            raise RunError(f"the run folder {self.path} (or its {paths.CONFIG_FILE}) was deleted while the run was "
                           f"using it; nothing more is written there. Start a new run.")

    @property
    def id(self) -> str:
        return self.path.name

    def lock(self) -> OwnerLock:
        """The run's owner lock, held by whoever trains it (the CLI, an app's queue, a study)."""
        return OwnerLock(self.path / paths.LOCK_FILE, f"run {self.id}",
                         f"Let it finish there or stop it (Stop in its app, Ctrl-C in its terminal); a killed owner "
                         f"frees the run at once. To continue it as soon as it is free: python -m seqmatch_engine "
                         f"distill --resume {self.path} --wait")

    # -- config, status, metrics ----------------------------------------------------------------
    def config(self) -> RunConfig:
        return RunConfig.from_dict(read_json(self.path / paths.CONFIG_FILE))

    def status(self) -> RunStatus:
        path = self.path / paths.STATUS_FILE
        try:
            return RunStatus.from_dict(read_json(path)) if path.exists() else RunStatus()
        except (StorageError, ValueError, TypeError) as error:
            raise StorageError(f"{path} cannot be read ({error}). Delete it: the run then lists as interrupted, and "
                               f"resuming it rewrites the file") from None

    def update_status(self, **changes: Any) -> RunStatus:
        """Set fields of status.json (RunStatus's; a damaged status.json is replaced: the run's owner rewrites it)."""
        self._require_folder()
        try:
            previous = self.status()
        except StorageError:
            previous = RunStatus()
        status = previous.replaced(**changes, updated=time.time())
        write_json(self.path / paths.STATUS_FILE, status.to_dict())
        return status

    def add_message(self, level: str, text: str) -> None:
        self.update_status(messages=[*self.status().messages, Message(level, text, time.time())])

    def log(self, record: MetricRecord) -> None:
        """Append one record to metrics.jsonl."""
        self._require_folder()
        append_jsonl(self.path / paths.METRICS_FILE, metric_to_dict(record))

    def metrics(self) -> list[MetricRecord]:
        """metrics.jsonl's records in order; StorageError (with the way out) when a line is not a record."""
        path = self.path / paths.METRICS_FILE
        try:
            return [metric_from_dict(line) for line in read_jsonl(path)]
        except (ValueError, TypeError, AttributeError) as error:
            raise StorageError(f"{path} holds a line that is not a metrics record ({error}). Delete that line (or the "
                               f"file: the run's loss and selection curves go, its sets and evaluation stay)") from None

    def validation_accuracy(self) -> float | None:
        """The best validation accuracy of the final stage's candidates (the whole curriculum), as its selection
        measured it; None without selection records there. What a study chooses an lr by; never test data."""
        last = len(self.config().distill.subsets) - 1
        scores = [r.val_accuracy for r in self.metrics() if isinstance(r, SelectionRecord) and r.stage == last]
        return max(scores) if scores else None

    def kept_iterations(self) -> list[int | None]:
        """Per stage, the iteration whose set the run kept: the last candidate that became the stage's best on
        validation (0: its initial images); None for a stage without selection records."""
        kept: list[int | None] = [None] * len(self.config().distill.subsets)
        for record in self.metrics():
            if isinstance(record, SelectionRecord) and record.best and record.stage < len(kept):
                kept[record.stage] = record.iteration
        return kept

    def truncate_metrics(self, stage: int, iteration: int) -> None:
        """Drop records of `stage` past `iteration` and of later stages (used when resuming)."""
        kept = [r for r in self.metrics() if r.stage < stage or (r.stage == stage and r.iteration <= iteration)]
        write_jsonl(self.path / paths.METRICS_FILE, [metric_to_dict(r) for r in kept])

    # -- tensors ---------------------------------------------------------------------------------
    def save_transform(self, transform: PixelTransform) -> None:
        self._require_folder()
        tensors = {"mean": transform.mean, "std": transform.std}
        if transform.zca_matrix is not None:
            tensors.update(zca_mean=transform.zca_mean, zca_matrix=transform.zca_matrix,
                           zca_inverse=transform.zca_inverse)
        write_tensors(self.path / paths.TRANSFORM_FILE, tensors)

    def transform_version(self) -> float | None:
        """When the display transform was written (None before the run loaded its data): a cache key."""
        path = self.path / paths.TRANSFORM_FILE
        return path.stat().st_mtime if path.exists() else None

    def transform(self) -> PixelTransform:
        t = read_tensors(self.path / paths.TRANSFORM_FILE, ("mean", "std"))
        return PixelTransform(t["mean"], t["std"], t.get("zca_mean"), t.get("zca_matrix"), t.get("zca_inverse"))

    def save_subset(self, stage: int, subset: Subset) -> None:
        self._require_folder()
        write_tensors(paths.subset_file(self.path, stage),
                      {"images": subset.images, "labels": subset.labels, "lr": torch.tensor(subset.lr)})

    def subsets(self) -> list[Subset]:
        """Finished subsets S_1, S_2, ... in order (stops at the first missing one)."""
        found = []
        while paths.subset_file(self.path, len(found)).is_file():
            try:
                t = read_tensors(paths.subset_file(self.path, len(found)), ("images", "labels", "lr"))
            except StorageError as error:
                raise StorageError(f"{error}. {_SUBSET_WAY_OUT}") from None
            labels = t["labels"] if t["labels"].is_floating_point() else t["labels"].long()  # soft logits stay
            found.append(Subset(t["images"], labels, float(t["lr"])))
        return found

    def _check_subsets(self, count: int) -> None:
        """StorageError (with the way out) when a subset file exists but is damaged."""
        for stage in range(count):
            try:
                check_tensor_file(paths.subset_file(self.path, stage))
            except StorageError as error:
                raise StorageError(f"{error}. {_SUBSET_WAY_OUT}") from None

    def save_checkpoint(self, checkpoint: "Checkpoint") -> None:
        self._require_folder()
        write_tensors(self.path / paths.CHECKPOINT_FILE, checkpoint.tensors(),
                      metadata={"info": json.dumps(checkpoint.info())})

    def checkpoint(self) -> "Checkpoint | None":
        """The resume point of the stage in progress, None without one; StorageError when it is damaged."""
        path = self.path / paths.CHECKPOINT_FILE
        if not path.exists():
            return None

        tensors = read_tensors(path, ("images", "lr", "generator", "best_images"))
        try:
            with safe_open(str(path), "pt") as handle:
                info = json.loads((handle.metadata() or {}).get("info", "{}"))
            return Checkpoint.from_parts(tensors, info)
        except (ValueError, KeyError, TypeError) as error:
            raise StorageError(f"{path} has damaged metadata ({error})") from None

    def checkpoint_images(self) -> tuple[int, torch.Tensor] | None:
        """(stage, images) of the checkpoint, for display; None without a readable one."""
        try:
            found = self.checkpoint()
        except StorageError:
            return None
        return (found.stage, found.images) if found else None

    def resume_point(self, stage: int) -> "Checkpoint | None":
        """The checkpoint of `stage` (0-based), with metrics.jsonl cut back to it; None when the stage starts
        over (its records from an earlier attempt dropped). A damaged checkpoint is set aside with a message."""
        try:
            found = self.checkpoint()
        except StorageError as error:
            aside = self.set_aside_checkpoint()
            self.add_message("warning", f"{error}; moved it to {aside.name} and started S{stage + 1} again from its "
                                        f"beginning")
            found = None
        if found is None or found.stage != stage:
            self.truncate_metrics(stage, 0)
            return None
        self.truncate_metrics(stage, found.iteration)
        return found

    def set_aside_checkpoint(self) -> Path:
        """Rename a (damaged) checkpoint to checkpoint.damaged-<time>.safetensors; returns the new path."""
        aside = self.path / f"checkpoint.damaged-{time.strftime('%Y%m%d-%H%M%S')}.safetensors"
        (self.path / paths.CHECKPOINT_FILE).replace(aside)
        return aside

    def clear_checkpoint(self) -> None:
        (self.path / paths.CHECKPOINT_FILE).unlink(missing_ok=True)

    def save_snapshot(self, stage: int, iteration: int, images: torch.Tensor, lr: float,
                      soft_labels: torch.Tensor | None = None) -> None:
        """A timeline point of subset `stage`: its images, lr and, when it learns them, its soft label logits."""
        self._require_folder()
        tensors = {"images": images, "lr": torch.tensor(lr)}
        if soft_labels is not None:
            tensors["labels"] = soft_labels
        write_tensors(paths.snapshot_file(self.path, stage, iteration), tensors)

    def snapshots(self) -> list[tuple[int, int]]:
        """(stage, iteration) of every timeline snapshot, in order."""
        found = []
        for p in (self.path / paths.SNAPSHOTS_DIR).glob("S*_*.safetensors"):
            stage, iteration = p.stem[1:].split("_")
            found.append((int(stage) - 1, int(iteration)))
        return sorted(found)

    def snapshot_images(self, stage: int, iteration: int) -> torch.Tensor:
        """The images (n_k, C, H, W) of subset `stage` after `iteration` outer iterations (a timeline snapshot)."""
        return read_tensors(paths.snapshot_file(self.path, stage, iteration), ("images",))["images"]

    def snapshot_labels(self, stage: int, iteration: int) -> torch.Tensor | None:
        """The soft label logits (n_k, classes) of that snapshot; None for a subset whose labels are fixed classes."""
        return read_tensors(paths.snapshot_file(self.path, stage, iteration), ("images",)).get("labels")

    def save_eval(self, result: "EvalResult", name: str | None = None) -> Path:
        """eval.json (the run's own evaluation, name None) or evaluations/<name>.json (one with other settings);
        returns the file written."""
        self._require_folder()
        path = self.path / paths.EVAL_FILE if name is None else self.evaluation_file(name)
        write_json(path, result.to_dict())
        return path

    def eval(self) -> "EvalResult | None":
        """The run's own evaluation (eval.json), None before it: what lists and studies show."""
        path = self.path / paths.EVAL_FILE
        return EvalResult.from_dict(read_json(path)) if path.exists() else None

    def evaluations(self) -> dict[str, "EvalResult"]:
        """Evaluations with other settings than the run's own, by name (evaluate --epochs/--nets/--arch)."""
        found = {}
        for path in sorted((self.path / paths.EVALUATIONS_DIR).glob("*.json")):
            try:
                found[path.stem] = EvalResult.from_dict(read_json(path))
            except StorageError:
                continue  # a damaged extra evaluation hides only itself
        return found

    def evaluation_file(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) or name.startswith("."):
            raise RunError(f"evaluation name {name[:80]!r}: use letters, digits, '.', '-' or '_'")
        return self.path / paths.EVALUATIONS_DIR / f"{name}.json"

    def save_controls(self, result: dict[str, Any]) -> None:
        write_json(self.path / paths.CONTROLS_FILE, result)

    def controls(self) -> dict[str, Any] | None:
        """Accuracies of the evaluation-only controls (evaluate.control_curricula), if measured."""
        path = self.path / paths.CONTROLS_FILE
        return read_json(path) if path.exists() else None

    def origin(self) -> str | None:
        """The folder this run was copied from (RunFolder.copy_of), None for a run trained here."""
        path = self.path / paths.ORIGIN_FILE
        return str(read_json(path).get("copied_from")) if path.exists() else None

    def finished(self) -> bool:
        """Whether the run is done and evaluated (what a study reports, copies and archives)."""
        return self.status().state == RunState.DONE and self.eval() is not None

    def archive_to(self, target: Path) -> None:
        """Copy this finished run's record into the new folder `target`: everything but its checkpoint, snapshots and
        exports (its sets, metrics, evaluations, controls and diagnostics stay: what a study's summary reads)."""
        if not self.finished():
            raise RunError(f"{self.path} is not a finished run (only those are archived)")
        copy_files(self.path, target, LEFT_OUT_OF_ARCHIVES)

    def delete(self) -> None:
        shutil.rmtree(self.path)

    # -- a run that travels (a study's run distilled on a cluster worker) ------------------------------
    def pack(self) -> dict[str, bytes]:
        """Every file of the folder by its path relative to the folder (POSIX)."""
        return {p.relative_to(self.path).as_posix(): p.read_bytes() for p in sorted(self.path.rglob("*"))
                if p.is_file() and not p.name.endswith(".tmp") and p.name != paths.LOCK_FILE}

    def install(self, files: dict[str, bytes]) -> None:
        """Make the folder hold exactly `files` (as `pack` gives them): each written atomically, status.json last,
        then files it no longer has removed (never the owner lock, which only its holder's process touches).
        RunError for a path that would leave the folder."""
        files = {name: data for name, data in files.items() if name != paths.LOCK_FILE}
        targets = {name: self._inside(name) for name in files}
        for name in sorted(files, key=lambda n: n == paths.STATUS_FILE):
            write_bytes(targets[name], files[name])
        for path in sorted(self.path.rglob("*"), reverse=True):
            if path.is_file() and path not in targets.values() and path.name != paths.LOCK_FILE:
                path.unlink()

    def _inside(self, name: str) -> Path:
        path = (self.path / name).resolve()
        if name.startswith("/") or ".." in Path(name).parts or not path.is_relative_to(self.path.resolve()):
            raise RunError(f"refused to write {name!r}: it is not a path inside the run folder {self.path}")
        return self.path / name

    @classmethod
    def unpack(cls, root: Path, run_id: str, files: dict[str, bytes]) -> "RunFolder":
        """A folder root/run_id holding `files` (a packed run), e.g. in a worker's scratch folder."""
        run = cls(paths.child(root, run_id, "run"))
        run.path.mkdir(parents=True, exist_ok=True)
        run.install(files)
        return run

    def overview(self) -> "RunOverview":
        """What a list of runs shows about this one; never raises: a damaged file makes it 'unreadable' with the
        file and what to do."""
        try:
            config, status, result = self.config(), self.status(), self.eval()
            self._check_subsets(len(config.distill.subsets))
        except (ValueError, OSError) as error:
            return RunOverview(self.id, None, None, RunState.UNREADABLE, "", None, None, str(error))
        return RunOverview(self.id, config.method, config.ipc, status.state, status.phase,
                           result.accuracy() if result else None,
                           result.accuracy("random_real") if result else None, None, config.budget,
                           result.diverged if result else [])


def folder_signature(root: Path) -> str:
    """Changes whenever a folder under `root` appears, goes, or has its status.json rewritten (cheap: stats only)."""
    root = Path(root)
    if not root.exists():
        return "-"
    digest = hashlib.sha256()
    for folder in sorted(root.iterdir()):
        status = folder / paths.STATUS_FILE
        digest.update(f"{folder.name}:{status.stat().st_mtime_ns if status.exists() else 0}|".encode())
    return digest.hexdigest()[:16]


def list_runs(root: Path | None = None) -> list[RunFolder]:
    """Run folders under `root` (default: the runs root), newest first."""
    root = Path(root or paths.runs_root())
    if not root.exists():
        return []
    runs = [RunFolder(p) for p in root.iterdir() if not p.name.startswith(".") and paths.inside(root, p)
            and (p / paths.CONFIG_FILE).is_file()]  # never a link to a folder elsewhere, nor one being created

    def created(run: RunFolder) -> tuple:
        """Folder time stamp (to the second), then the exact creation time within that second."""
        try:
            return (run.id[:15], run.status().created)
        except (ValueError, OSError):  # a damaged status.json: the run still lists, by its name
            return (run.id[:15], 0.0)

    return sorted(runs, key=created, reverse=True)
