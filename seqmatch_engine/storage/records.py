"""The typed contents of run and study folders' files: states, the status, metrics.jsonl's records, the evaluation
result, the resume checkpoint, and the row a list of runs shows. runs.RunFolder reads and writes them; nothing here
touches a file."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Union

import torch

from seqmatch_engine.core.phases import PhaseKind, TextEnum
from seqmatch_engine.storage.files import StorageError


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
    def on_disk(cls, state: "RunState | str") -> "RunState":
        """A state a status.json says, as seen by a process that is not running it."""
        state = cls(state)
        return cls.INTERRUPTED if state in (cls.RUNNING, cls.QUEUED, cls.CREATED, cls.PAUSED) else state


def known_fields(cls, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of `cls` (a file written by another version may hold others)."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def _replaced(record: Any, changes: dict[str, Any]) -> Any:
    """`record` with `changes`; an unknown field is a ValueError naming it and the known ones."""
    names = {f.name for f in fields(record)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(f"{type(record).__name__} has no field {', '.join(unknown)}; "
                         f"its fields: {', '.join(sorted(names))}")
    if "state" in changes:
        changes = {**changes, "state": RunState(changes["state"])}
    return replace(record, **changes)


@dataclass(frozen=True)
class Message:
    """A run's message to its user ("info" or "warning"), shown by the CLI, the app and `runs`."""

    level: str
    text: str
    time: float = 0.0


@dataclass(frozen=True)
class RunStatus:
    """A run folder's status.json: what its owner last said (RunFolder.status reads it, update_status writes it)."""

    state: RunState = RunState.CREATED
    phase: str = ""
    phase_kind: PhaseKind | None = None
    created: float = 0.0
    updated: float = 0.0
    finished: float | None = None
    stage: int | None = None                 # the stage being distilled (0-based), None outside stages
    iteration: int = 0                       # outer iterations done in that stage
    iterations: int = 0                      # of that stage's
    experts_total: int | None = None         # an experts phase: experts the stage needs
    experts_cached: int | None = None        # of which the cache (or the shipped set) already held
    message: str | None = None               # a note on the current phase
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per phase, over resumes
    executor: str | None = None              # where the jobs ran ("this process, 2 threads", "Dask ...")
    memory_mode: str | None = None           # the unroll's memory mode and why
    memory_note: str | None = None
    class_names: list[str] = field(default_factory=list)
    dataset: str | None = None
    diverged: list[int] = field(default_factory=list)  # stages whose matching diverged
    messages: list[Message] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunStatus":
        known = known_fields(cls, data)
        known["state"] = RunState(known.get("state", RunState.CREATED))
        known["messages"] = [Message(**known_fields(Message, m)) for m in known.get("messages", [])]
        known["phase_kind"] = PhaseKind(known["phase_kind"]) if known.get("phase_kind") else None
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": str(self.state),
                "phase_kind": str(self.phase_kind) if self.phase_kind else None}

    def replaced(self, **changes: Any) -> "RunStatus":
        return _replaced(self, changes)

    @property
    def on_disk(self) -> RunState:
        """The state as seen by a process that is not running the run (RunState.on_disk)."""
        return RunState.on_disk(self.state)


@dataclass(frozen=True)
class StudyStatus:
    """A study folder's status.json."""

    state: RunState = RunState.CREATED
    created: float = 0.0
    started: float | None = None
    updated: float = 0.0
    finished: float | None = None
    total: int = 0           # runs in the plan
    done: int = 0            # runs finished
    index: int = 0           # the plan position of the run in progress
    current: str | None = None  # its id
    controls: str | None = None  # the finished run whose evaluation-only controls are measured now (between runs)
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyStatus":
        known = known_fields(cls, data)
        known["state"] = RunState(known.get("state", RunState.CREATED))
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": str(self.state)}

    def replaced(self, **changes: Any) -> "StudyStatus":
        return _replaced(self, changes)


# -- metrics.jsonl: one record per line, its kind first --------------------------------------------------------
@dataclass(frozen=True)
class IterationRecord:
    """One outer iteration of a stage (0-based stage, 1-based iteration): its matching loss, the learned lr after
    it, the start epoch and expert it matched, and the mean seconds per iteration of the stage so far."""

    KIND: ClassVar[str] = "iteration"
    stage: int
    iteration: int
    loss: float
    lr: float
    start_epoch: int
    expert: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class SelectionRecord:
    """A candidate of a stage scored on validation data (iteration 0: the initial images); `best` when it became
    the stage's best so far."""

    KIND: ClassVar[str] = "selection"
    stage: int
    iteration: int
    val_accuracy: float
    best: bool


@dataclass(frozen=True)
class DivergenceRecord:
    """A stage stopped at `iteration` by a divergence check, with its message."""

    KIND: ClassVar[str] = "divergence"
    stage: int
    iteration: int
    message: str


MetricRecord = Union[IterationRecord, SelectionRecord, DivergenceRecord]
METRIC_KINDS: dict[str, type] = {kind.KIND: kind for kind in (IterationRecord, SelectionRecord, DivergenceRecord)}


def metric_to_dict(record: MetricRecord) -> dict[str, Any]:
    """A metrics.jsonl line's contents: {"kind": ..., then the record's fields in order}."""
    return {"kind": record.KIND, **asdict(record)}


def metric_from_dict(data: dict[str, Any]) -> MetricRecord:
    """The record a metrics.jsonl line holds; ValueError for an unknown kind or a missing field."""
    kind = METRIC_KINDS.get(data.get("kind"))
    if kind is None:
        raise ValueError(f"unknown record kind {data.get('kind')!r} (known: {', '.join(METRIC_KINDS)})")
    return kind(**known_fields(kind, data))


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

    # "synthetic": the set with its own labels; "random_real": random real images with hard labels; for a set with
    # soft labels also "synthetic_hard" (its top classes as hard labels) and "random_real_soft" (random real images
    # with soft labels from the same experts): the fair baseline of a soft-label method.
    SETS = ("synthetic", "random_real", "synthetic_hard", "random_real_soft")

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
    """Everything needed to resume stage `stage` after `iteration` outer iterations: the method's state dict (its
    images, lr, labels and optimiser momenta), the stage's generator, and the best candidate so far."""

    stage: int
    iteration: int
    state: dict[str, torch.Tensor]       # Method.state_dict(): "images" (n_k, C, H, W), "lr" (), "labels", momenta
    generator_state: torch.Tensor        # torch.Generator.get_state()
    best_accuracy: float
    best_iteration: int
    best_images: torch.Tensor
    best_lr: float
    best_labels: torch.Tensor | None = None  # None in checkpoints from before methods owned their labels

    OWN = ("generator", "best_images", "best_labels")  # tensor names that are not the method's

    @property
    def images(self) -> torch.Tensor:
        return self.state["images"]

    @property
    def lr(self) -> float:
        return float(self.state["lr"])

    @property
    def generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.set_state(self.generator_state)
        return generator

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {name: t.detach() for name, t in self.state.items()}
        tensors.update(generator=self.generator_state, best_images=self.best_images.detach())
        if self.best_labels is not None:
            tensors["best_labels"] = self.best_labels.detach()
        return tensors

    def info(self) -> dict[str, Any]:
        return {"stage": self.stage, "iteration": self.iteration, "best_accuracy": self.best_accuracy,
                "best_iteration": self.best_iteration, "best_lr": self.best_lr}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> "Checkpoint":
        state = {name: t for name, t in tensors.items() if name not in cls.OWN}
        return cls(int(info["stage"]), int(info["iteration"]), state, tensors["generator"],
                   float(info["best_accuracy"]), int(info["best_iteration"]), tensors["best_images"],
                   float(info["best_lr"]), tensors.get("best_labels"))


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
