"""What a viewer sees of a run: a LiveState, folded from the driver's events as they come (a running job) or
read back from a run folder (a run of another process, or one that ended)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from seqmatch_engine.core.labels import is_soft
from seqmatch_engine.core.phases import PhaseKind
from seqmatch_engine.orchestration.driver import Event, EventKind
from seqmatch_engine.orchestration.eta import PhasePlan, remaining_seconds
from seqmatch_engine.storage.records import IterationRecord, RunState, SelectionRecord
from seqmatch_engine.storage.runs import RunFolder

MAX_POINTS = 400  # curve points kept per series (older points are thinned)


@dataclass
class LiveState:
    """What a viewer needs about one job; `images` are model inputs (n, C, H, W) per subset."""

    run_id: str
    state: RunState = RunState.QUEUED
    phase: str = "queued"
    phase_kind: PhaseKind | None = None     # what the phase does (None while queued and once ended)
    study_run: str | None = None            # a study's job: the run in progress, "run 3/38: <id>"
    memory_mode: str | None = None  # the matching step's memory mode: "unrolled" or "recompute"
    memory_note: str | None = None  # why that mode, with the estimates (MemoryChoice.describe)
    executor: str | None = None     # where jobs run: "local (2 jobs at a time)", "dask tcp://... (4 workers)"
    stage: int | None = None
    iteration: int = 0
    iterations: int = 0
    progress: tuple[int, int] | None = None   # (done, total) of experts / evaluation
    eta_s: float | None = None
    losses: list[tuple[int, int, float]] = field(default_factory=list)      # (stage, iteration, loss)
    lrs: list[tuple[int, int, float]] = field(default_factory=list)
    start_epochs: list[tuple[int, int, int]] = field(default_factory=list)
    selections: list[tuple[int, int, float]] = field(default_factory=list)  # (stage, iteration, val acc)
    images: dict[int, torch.Tensor] = field(default_factory=dict)           # stage -> latest images
    soft_labels: dict[int, torch.Tensor] = field(default_factory=dict)      # stage -> latest soft label logits
    image_version: int = 0
    evaluation: list[dict[str, Any]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    waiting_for: str | None = None  # queued behind another process (another app on this home, the CLI): who
    started: float | None = None
    first_image_s: float | None = None   # seconds from start to the first published image
    waiting: set[int] = field(default_factory=set)        # stages shown with their initial images, not learning yet
    plan: list[PhasePlan] = field(default_factory=list)   # the run's phases as work units (eta.run_plan)
    measured: dict[str, float] = field(default_factory=dict)  # seconds per unit by phase kind, measured here
    phase_started: float | None = None
    phase_first_fraction: float | None = None

    def phase_fraction(self) -> float:
        """How much of the current phase is done, 0..1."""
        if self.phase_kind is PhaseKind.DISTILLING and self.iterations:
            return self.iteration / self.iterations
        return self.progress[0] / self.progress[1] if self.progress and self.progress[1] else 0.0

    def run_eta(self, now: float | None = None) -> float | None:
        """Seconds until the run is done (this phase and the ones after it), or None while it cannot tell."""
        if self.state != RunState.RUNNING or self.phase_started is None or not self.plan:
            return None
        kinds = {p.name: p for p in self.plan}
        if self.phase not in kinds:
            return None
        measured = dict(self.measured)
        fraction, first = self.phase_fraction(), self.phase_first_fraction or 0.0
        elapsed = (now or time.time()) - self.phase_started
        if fraction - first > 0.02 and elapsed > 1.0:
            measured[kinds[self.phase].kind] = elapsed / (kinds[self.phase].units * (fraction - first))
        return remaining_seconds(self.plan, self.phase, fraction, measured)


def fold(live: LiveState, event: Event) -> None:
    """Apply one driver event to a live state (in place): the live view is this fold over a run's events,
    whether they arrive from a running driver or are read back from a run folder (live_from_folder)."""
    data = event.data
    if event.kind == EventKind.PHASE:
        _close_phase(live)
        live.phase_started, live.phase_first_fraction = time.time(), None
        live.phase, live.phase_kind = data["name"], data.get("phase_kind")
        live.stage = event.stage if event.stage is not None else live.stage
        live.progress = None
        live.memory_mode = data.get("memory_mode", live.memory_mode)
        live.memory_note = data.get("memory_note", live.memory_note)
        live.executor = data.get("executor", live.executor)
        if "iterations" in data:
            live.iterations, live.iteration = data["iterations"], data.get("iteration", 0)
        if "message" in data:
            live.messages.append(data["message"])
    elif event.kind == EventKind.PROGRESS:
        live.progress = (data["done"], data["total"])
        if live.phase_first_fraction is None:
            live.phase_first_fraction = live.phase_fraction()
    elif event.kind == EventKind.PLAN:
        live.plan = list(data["phases"])
    elif event.kind == EventKind.PREVIEW:
        for stage, images in data["images"].items():
            _publish(live, stage, images)
        live.waiting = set(data["images"])
    elif event.kind == EventKind.ITERATION:
        live.stage, live.iteration, live.iterations = event.stage, event.iteration, data["total"]
        live.eta_s = data["eta_s"]
        live.losses = _thin([*live.losses, (event.stage, event.iteration, data["loss"])])
        live.lrs = _thin([*live.lrs, (event.stage, event.iteration, data["lr"])])
        live.start_epochs = _thin([*live.start_epochs, (event.stage, event.iteration, data["start_epoch"])])
        if data.get("images") is not None:
            _publish(live, event.stage, data["images"], data.get("labels"))
    elif event.kind in (EventKind.STAGE_START, EventKind.STAGE_DONE):
        live.waiting.discard(event.stage)
        if event.kind == EventKind.STAGE_START:
            live.phase_first_fraction = event.iteration / live.iterations if live.iterations else 0.0
        _publish(live, event.stage, data["images"], data.get("labels"))
    elif event.kind == EventKind.SELECTION:
        live.selections.append((event.stage, event.iteration, data["val_accuracy"]))
    elif event.kind == EventKind.EVALUATION:
        live.evaluation.append(data["data"])
    elif event.kind == EventKind.ERROR:
        live.error = data["message"]


def _close_phase(live: LiveState) -> None:
    """On leaving a phase: remember its measured seconds per unit (when enough of it ran here to tell)."""
    phases = {p.name: p for p in live.plan}
    if live.phase not in phases or live.phase_started is None:
        return
    done = 1.0 - (live.phase_first_fraction or 0.0)
    if done > 0.05 and phases[live.phase].units:
        live.measured[phases[live.phase].kind] = (time.time() - live.phase_started) / (phases[live.phase].units * done)


def _publish(live: LiveState, stage: int, images: torch.Tensor, soft_labels: torch.Tensor | None = None) -> None:
    live.images[stage] = images.detach().cpu()
    if soft_labels is not None:
        live.soft_labels[stage] = soft_labels.detach().cpu()
    live.image_version += 1
    if live.first_image_s is None and live.started is not None:
        live.first_image_s = time.time() - live.started


def events_from_folder(run: RunFolder) -> list[Event]:
    """A finished or interrupted run's metrics.jsonl as the events the driver emitted (without images)."""
    events = []
    for record in run.metrics():
        if isinstance(record, IterationRecord):
            events.append(Event(EventKind.ITERATION, record.stage, record.iteration, {
                "loss": record.loss, "lr": record.lr, "start_epoch": record.start_epoch, "images": None,
                "total": 0, "eta_s": None}))
        elif isinstance(record, SelectionRecord):
            events.append(Event(EventKind.SELECTION, record.stage, record.iteration,
                                {"val_accuracy": record.val_accuracy}))
    return events


def live_from_folder(run: RunFolder) -> LiveState:
    """A LiveState rebuilt from a run folder alone (a finished run, or one from an earlier process)."""
    status = run.status()
    live = LiveState(run.id)
    for event in events_from_folder(run):
        fold(live, event)
    live.state, live.phase = status.on_disk, status.phase or str(status.on_disk)
    live.phase_kind = status.phase_kind
    live.memory_mode, live.memory_note = status.memory_mode, status.memory_note
    live.executor = status.executor
    live.stage, live.eta_s = status.stage, None
    live.iteration, live.iterations = status.iteration, status.iterations
    live.error, live.messages = status.error, [m.text for m in status.messages]
    subsets = run.subsets()
    live.images = {k: subset.images for k, subset in enumerate(subsets)}
    live.soft_labels = {k: subset.labels for k, subset in enumerate(subsets) if is_soft(subset.labels)}
    snapshots = run.snapshots()
    if snapshots and snapshots[-1][0] not in live.images:
        stage, iteration = snapshots[-1][:2]
        live.images[stage] = run.snapshot_images(stage, iteration)
        if (labels := run.snapshot_labels(stage, iteration)) is not None:
            live.soft_labels[stage] = labels
    live.image_version = len(snapshots) + len(live.images)
    return live


def _thin(series: list) -> list:
    """Keep at most MAX_POINTS by dropping every other point of the older half."""
    if len(series) <= MAX_POINTS:
        return series
    half = len(series) // 2
    return series[:half:2] + series[half:]


class LiveObserver:
    """Folds a running driver's events into its job's live state, under the manager's lock (small copies only,
    so the distillation loop never waits for a reader)."""

    def __init__(self, live: LiveState, lock: threading.Lock):
        self.live, self.lock = live, lock

    def __call__(self, event: Event) -> None:
        with self.lock:
            fold(self.live, event)
