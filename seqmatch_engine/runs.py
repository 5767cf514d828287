"""A run is a folder on disk; `RunFolder` is the only code that reads or writes one.

    runs/<id>/config.json       validated RunConfig
              status.json       phase, stage, iteration, state (running/done/failed/stopped), messages
              metrics.jsonl     one record per outer iteration / evaluation
              transform.safetensors   normalisation (+ZCA) for turning model inputs into pixels
              checkpoint.safetensors  everything needed to resume the current stage
              subsets/S<k>.safetensors  finished subsets: images, labels, lr
              snapshots/S<k>_<it>.safetensors  timeline of images and lr
              eval.json         final accuracies
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from . import paths
from .config import RunConfig
from .imaging import Panel, labelled_panels, save_png
from .prepare import PixelTransform
from .storage import (
    StorageError,
    append_jsonl,
    check_tensor_file,
    read_json,
    read_jsonl,
    read_tensors,
    write_json,
    write_tensors,
    write_text,
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
    """A learned subset S_k: images (n, C, H, W) as model inputs, labels (n,), its lr."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-")[:40]


def _new_folder(root: Path, base: str) -> Path:
    """Create and return root/base, or root/base-1, base-2, ... when taken."""
    for n in range(1000):
        path = root / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"{root} already holds 1000 folders named {base}*; delete some")


class TextEnum(str, Enum):
    """An enum whose members are their text everywhere: in JSON, f-strings and comparisons with strings."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class RunState(TextEnum):
    """A run's state in status.json (the last two are never written: views derive them)."""

    CREATED = "created"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"   # running/queued/created on disk, but no process is running it: resumable
    UNREADABLE = "unreadable"     # a damaged file

    @property
    def active(self) -> bool:
        return self in (RunState.QUEUED, RunState.RUNNING, RunState.PAUSED)

    @classmethod
    def on_disk(cls, status: dict[str, Any]) -> "RunState":
        """The state a run's status.json says, as seen by a process that is not running it."""
        state = cls(status.get("state", "created"))
        return cls.INTERRUPTED if state in (cls.RUNNING, cls.QUEUED, cls.CREATED, cls.PAUSED) else state


@dataclass
class EvalResult:
    """eval.json: test accuracies by set ("synthetic", "random_real") and architecture, each
    {"mean", "std", "values"} over evaluation nets, with what was evaluated."""

    method: str
    ipc: int
    lrs: list[float]
    eval_epochs: int
    num_nets: int
    budget: str | None = None
    diverged: list[int] = field(default_factory=list)
    sets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    SETS = ("synthetic", "random_real")

    def add(self, name: str, arch: str, accuracy: dict[str, Any]) -> None:
        self.sets.setdefault(name, {})[arch] = accuracy

    def accuracy(self, name: str = "synthetic", arch: str = "convnet") -> dict[str, Any] | None:
        return self.sets.get(name, {}).get(arch)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ipc": self.ipc, "budget": self.budget, "diverged": self.diverged,
                "lrs": self.lrs, "eval_epochs": self.eval_epochs, "num_nets": self.num_nets, **self.sets}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "EvalResult":
        try:
            return cls(raw["method"], raw["ipc"], raw["lrs"], raw.get("eval_epochs", 0), raw.get("num_nets", 0),
                       raw.get("budget"), raw.get("diverged", []), {name: raw[name] for name in cls.SETS if name in raw})
        except (KeyError, TypeError) as error:
            raise StorageError(f"eval.json lacks {error}: it was not written by this tool or is damaged; delete it "
                               f"and evaluate the run again") from None


@dataclass
class Checkpoint:
    """Everything needed to resume stage `stage` after `iteration` outer iterations."""

    stage: int
    iteration: int
    images: torch.Tensor                 # (n_k, C, H, W)
    lr: float
    generator_state: torch.Tensor        # torch.Generator.get_state()
    image_momentum: torch.Tensor | None
    lr_momentum: torch.Tensor | None
    best_accuracy: float
    best_iteration: int
    best_images: torch.Tensor
    best_lr: float

    @property
    def generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.set_state(self.generator_state)
        return generator

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"images": self.images.detach(), "lr": torch.tensor(self.lr), "generator": self.generator_state,
                   "best_images": self.best_images.detach()}
        for name in ("image_momentum", "lr_momentum"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        return tensors

    def info(self) -> dict[str, Any]:
        return {"stage": self.stage, "iteration": self.iteration, "best_accuracy": self.best_accuracy,
                "best_iteration": self.best_iteration, "best_lr": self.best_lr}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> "Checkpoint":
        return cls(int(info["stage"]), int(info["iteration"]), tensors["images"], float(tensors["lr"]),
                   tensors["generator"], tensors.get("image_momentum"), tensors.get("lr_momentum"),
                   float(info["best_accuracy"]), int(info["best_iteration"]), tensors["best_images"],
                   float(info["best_lr"]))


@dataclass(frozen=True)
class RunOverview:
    """One row of a list of runs. `state` is the run's own, or "unreadable" (then `problem` says why and what
    to do); accuracies are {"mean", "std", "values"} dicts of the ConvNet evaluation, None until evaluated."""

    id: str
    method: str | None
    ipc: int | None
    state: RunState
    phase: str
    accuracy: dict[str, Any] | None
    baseline: dict[str, Any] | None
    problem: str | None = None
    budget: str | None = None
    diverged: list[int] = field(default_factory=list)


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
        if run_id is not None:
            path = paths.child(root, run_id, "run")
            path.mkdir()
        else:
            path = _new_folder(root, base)
        run = cls(path)
        write_json(path / paths.CONFIG_FILE, config.to_dict())
        run.update_status(state="created", phase="queued", created=time.time())
        return run

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

    # -- config, status, metrics ----------------------------------------------------------------
    def config(self) -> RunConfig:
        return RunConfig.from_dict(read_json(self.path / paths.CONFIG_FILE))

    def status(self) -> dict[str, Any]:
        path = self.path / paths.STATUS_FILE
        try:
            return read_json(path) if path.exists() else {}
        except StorageError as error:
            raise StorageError(f"{error}. Delete {path}: the run then lists as interrupted, and resuming it "
                               f"rewrites the file") from None

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into status.json (a damaged status.json is replaced: the run's owner rewrites it)."""
        self._require_folder()
        try:
            previous = self.status()
        except StorageError:
            previous = {}
        status = {**previous, **fields, "updated": time.time()}
        write_json(self.path / paths.STATUS_FILE, status)
        return status

    def add_message(self, level: str, text: str) -> None:
        messages = self.status().get("messages", [])
        self.update_status(messages=[*messages, {"level": level, "text": text, "time": time.time()}])

    def log(self, record: dict[str, Any]) -> None:
        self._require_folder()
        append_jsonl(self.path / paths.METRICS_FILE, record)

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / paths.METRICS_FILE)

    def truncate_metrics(self, stage: int, iteration: int) -> None:
        """Drop records of `stage` past `iteration` and of later stages (used when resuming)."""
        kept = [r for r in self.metrics() if r.get("stage", 0) < stage
                or (r.get("stage") == stage and r.get("iteration", 0) <= iteration)]
        write_text(self.path / paths.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))

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

    def save_subset(self, stage: int, subset: Subset, info: dict[str, Any]) -> None:
        self._require_folder()
        write_tensors(paths.subset_file(self.path, stage),
                      {"images": subset.images, "labels": subset.labels, "lr": torch.tensor(subset.lr)},
                      metadata={"info": json.dumps(info)})

    def subsets(self) -> list[Subset]:
        """Finished subsets S_1, S_2, ... in order (stops at the first missing one)."""
        found = []
        while paths.subset_file(self.path, len(found)).is_file():
            try:
                t = read_tensors(paths.subset_file(self.path, len(found)), ("images", "labels", "lr"))
            except StorageError as error:
                raise StorageError(f"{error}. {_SUBSET_WAY_OUT}") from None
            found.append(Subset(t["images"], t["labels"].long(), float(t["lr"])))
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
        from safetensors import safe_open

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

    def save_snapshot(self, stage: int, iteration: int, images: torch.Tensor, lr: float) -> None:
        self._require_folder()
        write_tensors(paths.snapshot_file(self.path, stage, iteration), {"images": images, "lr": torch.tensor(lr)})

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
    def save_eval(self, result: "EvalResult") -> None:
        self._require_folder()
        write_json(self.path / paths.EVAL_FILE, result.to_dict())

    def eval(self) -> "EvalResult | None":
        """The final evaluation (eval.json), None before it; the only reader of that file."""
        path = self.path / paths.EVAL_FILE
        return EvalResult.from_dict(read_json(path)) if path.exists() else None

    def save_controls(self, result: dict[str, Any]) -> None:
        write_json(self.path / paths.CONTROLS_FILE, result)

    def controls(self) -> dict[str, Any] | None:
        """Accuracies of the evaluation-only controls (evaluate.control_curricula), if measured."""
        path = self.path / paths.CONTROLS_FILE
        return read_json(path) if path.exists() else None

    # -- export ----------------------------------------------------------------------------------
    def export(self, destination: Path | None = None) -> Path:
        """Write the distilled set (one safetensors file + a PNG grid per subset) and return the folder."""
        subsets = self.subsets()
        if not subsets:
            raise RunError(f"run {self.id} has no finished subset to export yet")
        config = self.config()
        destination = Path(destination or self.path / paths.EXPORT_DIR)
        if destination.exists() and not destination.is_dir():
            raise RunError(f"{destination.resolve()} is a file: give --out a folder (new or existing) to write the set to")
        try:
            destination.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunError(f"cannot create the folder {destination.resolve()} ({error.strerror}): give --out a folder "
                           f"you can write to") from None
        transform = self.transform()
        num_classes = int(max(int(s.labels.max()) for s in subsets)) + 1
        names = self.status().get("class_names") or [f"class {c}" for c in range(num_classes)]
        tensors: dict[str, torch.Tensor] = {}
        for k, subset in enumerate(subsets):
            tensors[f"S{k + 1}.images"] = subset.images
            tensors[f"S{k + 1}.labels"] = subset.labels
            tensors[f"S{k + 1}.lr"] = torch.tensor(subset.lr)
            tensors[f"S{k + 1}.pixels"] = transform.to_pixels(subset.images)
            panel = Panel(f"S{k + 1}", f"{len(subset.labels) // num_classes}/class · lr {subset.lr:.4g}", "#111827",
                          transform.to_pixels(subset.images), subset.labels)
            save_png(labelled_panels([panel], names, f"{config.method} · {self.id}"), destination / f"S{k + 1}.png")
        write_tensors(destination / "distilled_set.safetensors", tensors,
                      metadata={"config": json.dumps(config.to_dict()), "subsets": str(len(subsets))})
        return destination

    def delete(self) -> None:
        shutil.rmtree(self.path)

    def overview(self) -> "RunOverview":
        """What a list of runs shows about this one; never raises: a damaged file makes it 'unreadable' with the
        file and what to do."""
        try:
            config, status, result = self.config(), self.status(), self.eval()
            self._check_subsets(len(config.distill.subsets))
            state = RunState(status.get("state", "created"))
        except (ValueError, OSError) as error:
            return RunOverview(self.id, None, None, RunState.UNREADABLE, "", None, None, str(error))
        return RunOverview(self.id, config.method, config.ipc, state, status.get("phase", ""),
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
    runs = [RunFolder(p) for p in root.iterdir() if (p / paths.CONFIG_FILE).is_file()]

    def created(run: RunFolder) -> tuple:
        """Folder time stamp (to the second), then the exact creation time within that second."""
        try:
            return (run.id[:15], run.status().get("created", 0.0))
        except (ValueError, OSError):  # a damaged status.json: the run still lists, by its name
            return (run.id[:15], 0.0)

    return sorted(runs, key=created, reverse=True)
