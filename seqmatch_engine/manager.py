"""Background jobs: one worker thread runs queued run folders one at a time.

A UI (or a test) submits configs, then polls `JobManager.live(run_id)` for a snapshot of what
the driver last reported. Observers only copy small values under a lock, so the distillation
loop never waits for a reader. Pause / resume / stop go through each job's RunControl.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from . import paths
from .config import RunConfig
from .diagnostics import COMPUTED, DiagnosticsOptions, RunDiagnostics
from .eta import PhasePlan, remaining_seconds
from .executors import Executor
from .labels import is_soft
from .records import RunState
from .runs import RunError, RunFolder, list_runs
from .seqmatch import Distiller, Event, EventKind, RunControl, StopRequested
from .storage import StorageError
from .study import run_study
from .study_folder import StudyFolder
from .study_spec import StudySpec

MAX_POINTS = 400  # curve points kept per series (older points are thinned)


@dataclass
class LiveState:
    """What a viewer needs about one job; `images` are model inputs (n, C, H, W) per subset."""

    run_id: str
    state: RunState = RunState.QUEUED
    phase: str = "queued"
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
    started: float | None = None
    first_image_s: float | None = None   # seconds from start to the first published image
    waiting: set[int] = field(default_factory=set)        # stages shown with their initial images, not learning yet
    plan: list[PhasePlan] = field(default_factory=list)   # the run's phases as work units (eta.run_plan)
    measured: dict[str, float] = field(default_factory=dict)  # seconds per unit by phase kind, measured here
    phase_started: float | None = None
    phase_first_fraction: float | None = None

    def phase_fraction(self) -> float:
        """How much of the current phase is done, 0..1."""
        if self.phase.startswith("distilling") and self.iterations:
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
        live.phase = data["name"]
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
        stage, iteration = record.get("stage", 0), record.get("iteration", 0)
        if record.get("kind") == "iteration":
            events.append(Event(EventKind.ITERATION, stage, iteration, {
                "loss": record["loss"], "lr": record["lr"], "start_epoch": record["start_epoch"], "images": None,
                "total": 0, "eta_s": None}))
        elif record.get("kind") == "selection":
            events.append(Event(EventKind.SELECTION, stage, iteration, {"val_accuracy": record["val_accuracy"]}))
    return events


def live_from_folder(run: RunFolder) -> LiveState:
    """A LiveState rebuilt from a run folder alone (a finished run, or one from an earlier process)."""
    status = run.status()
    live = LiveState(run.id)
    for event in events_from_folder(run):
        fold(live, event)
    live.state, live.phase = RunState.on_disk(status), status.get("phase", RunState.on_disk(status))
    live.memory_mode, live.memory_note = status.get("memory_mode"), status.get("memory_note")
    live.executor = status.get("executor")
    live.stage, live.eta_s = status.get("stage"), None
    live.iteration, live.iterations = status.get("iteration", 0), status.get("iterations", 0)
    live.error, live.messages = status.get("error"), [m["text"] for m in status.get("messages", [])]
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


class _LiveObserver:
    """Folds a running driver's events into its job's live state, under the manager's lock (small copies only,
    so the distillation loop never waits for a reader)."""

    def __init__(self, live: LiveState, lock: threading.Lock):
        self.live, self.lock = live, lock

    def __call__(self, event: Event) -> None:
        with self.lock:
            fold(self.live, event)


@dataclass
class _Job:
    run: RunFolder | None  # None for a study (its runs are folders of the study)
    control: RunControl
    live: LiveState
    work: Callable[["_Job"], bool]  # runs the job in the worker; True: finished, False: stopped


class JobManager:
    """Owns the worker thread and the jobs it has seen in this process."""

    def __init__(self, home: Path | None = None, executor: Executor | None = None):
        """`executor`: where the jobs of every run go (default: local threads)."""
        self.home = home
        self.executor = executor
        self.runs_root = paths.runs_root(home)
        self.experts_root = paths.experts_root(home)
        self.studies_root = paths.studies_root(home)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.Queue[str] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="seqmatch-worker", daemon=True)
        self._worker.start()

    def run(self, run_id: object) -> RunFolder:
        """The run folder of `run_id`, an untrusted id from a request (refused if it leaves the runs root)."""
        if not run_id:
            raise RunError("pick a run first")
        return RunFolder.find(self.runs_root, run_id)

    def submit(self, config: RunConfig) -> str:
        """Create a run folder for `config` and queue it; returns the run id."""
        return self._enqueue(RunFolder.create(self.runs_root, config))

    def resume(self, run_id: str) -> str:
        """Queue an existing unfinished run folder again (it resumes from its checkpoint)."""
        job = self._jobs.get(run_id)
        if job and job.live.state.active:
            return run_id
        return self._enqueue(self.run(run_id))

    def _enqueue(self, run: RunFolder) -> str:
        run.update_status(state=RunState.QUEUED, phase="queued")
        return self._queue_job(_Job(run, RunControl(), LiveState(run.id), self._distil))

    def submit_diagnostics(self, run_id: str, options: DiagnosticsOptions, which: tuple[str, ...] = COMPUTED,
                           partner_id: str | None = None) -> str:
        """Queue G2-G4 (those in `which`) for a finished run (G2 of static MTT also on the retrained-expert
        families of SeqMatch run `partner_id`); returns the job id to poll with `live`."""
        run = self.run(run_id)
        partner = self.run(partner_id) if partner_id else None
        job_id = f"diagnostics:{run_id}"
        existing = self._jobs.get(job_id)
        if existing and existing.live.state in (RunState.QUEUED, RunState.RUNNING):
            return job_id

        def work(job: _Job) -> bool:
            diagnostics = RunDiagnostics(job.run, self.experts_root, options, executor=self.executor)
            for name in which:
                def progress(done: int, total: int, name: str = name) -> None:
                    job.control.checkpoint()
                    with self._lock:
                        job.live.phase, job.live.progress = f"computing {name.upper()}", (done, total)

                with self._lock:
                    job.live.phase, job.live.progress = f"computing {name.upper()}", None
                diagnostics.compute(name, progress, partner)
            return True

        return self._queue_job(_Job(run, RunControl(), LiveState(job_id), work))

    def submit_study(self, spec: StudySpec) -> str:
        """Queue (or resume) a study: its runs train one after the other like any run; returns the job id."""
        study = StudyFolder.create_or_open(self.studies_root, spec)
        job_id = f"study:{study.id}"
        existing = self._jobs.get(job_id)
        if existing and existing.live.state.active:
            return job_id

        def work(job: _Job) -> bool:
            def on_run(run_id: str, index: int, total: int) -> None:
                with self._lock:
                    job.live.phase, job.live.progress = f"run {index + 1}/{total}: {run_id}", (index, total)

            def observer(event: Event) -> None:
                if event.kind == "phase":
                    with self._lock:
                        job.live.phase = f"{job.live.phase.split(' · ')[0]} · {event.data['name']}"

            run_study(study, self.experts_root, observer, job.control, on_run, self.executor)
            return True

        study.update_status(state=RunState.QUEUED)
        return self._queue_job(_Job(None, RunControl(), LiveState(job_id), work))

    def _queue_job(self, job: _Job) -> str:
        with self._lock:
            self._jobs[job.live.run_id] = job
        self._queue.put(job.live.run_id)
        return job.live.run_id

    def _distil(self, job: _Job) -> bool:
        observer = _LiveObserver(job.live, self._lock)
        return Distiller(job.run, self.experts_root, observer, job.control, executor=self.executor).run() is not None

    def pause(self, run_id: str) -> None:
        job = self._jobs[run_id]
        job.control.pause()
        with self._lock:
            if job.live.state == RunState.RUNNING:
                job.live.state = RunState.PAUSED

    def unpause(self, run_id: str) -> None:
        job = self._jobs[run_id]
        job.control.resume()
        with self._lock:
            if job.live.state == RunState.PAUSED:
                job.live.state = RunState.RUNNING

    def stop(self, run_id: str) -> RunState | None:
        """Stop a job: a queued one leaves the queue at once (stopped, resumable), a running one stops after its
        current outer iteration (or epoch). Returns the state the job was in, None for an unknown id."""
        job = self._jobs.get(run_id)
        if job is None:
            return None
        with self._lock:
            was = job.live.state
        job.control.stop()
        if was == RunState.QUEUED:
            self._finish(job, RunState.STOPPED)  # the worker skips it when it comes up
        return was

    def live(self, run_id: str) -> LiveState | None:
        """A consistent copy of a job's live state (lists copied, image tensors shared read-only).

        Runs this process never ran are read from their folder; unknown ids give None.
        """
        job = self._jobs.get(run_id)
        if job is None:
            try:
                run = self.run(run_id)
            except RunError:
                return None
            try:
                return live_from_folder(run)
            except (StorageError, ValueError) as error:  # a damaged file: say which and what to do
                return LiveState(run.id, state="unreadable", phase="unreadable", error=str(error))
        with self._lock:
            live = job.live
            return replace(live, losses=list(live.losses), lrs=list(live.lrs), start_epochs=list(live.start_epochs),
                           selections=list(live.selections), images=dict(live.images),
                           evaluation=list(live.evaluation), messages=list(live.messages))

    def owns(self, run_id: str | None) -> bool:
        """Whether this process queued or ran `run_id` (so it can pause, resume or stop it)."""
        return bool(run_id) and run_id in self._jobs

    def jobs(self) -> list[LiveState]:
        return [self.live(run_id) for run_id in list(self._jobs)]

    def latest(self) -> str | None:
        """What a fresh page shows when nothing runs: the newest finished run, else the newest run on disk."""
        found = list_runs(self.runs_root)
        done = [run for run in found if run.overview().state == RunState.DONE]
        return (done or found)[0].id if found else None

    def active(self) -> str | None:
        """Id of the job running (or paused) now."""
        with self._lock:
            for run_id, job in self._jobs.items():
                if job.live.state in (RunState.RUNNING, RunState.PAUSED):
                    return run_id
        return None

    def queue_position(self, run_id: str) -> int:
        """0 when running, n when n jobs run or wait before it."""
        with self._lock:
            waiting = [r for r, j in self._jobs.items() if j.live.state.active]
        return waiting.index(run_id) if run_id in waiting else -1

    def _work(self) -> None:
        # The first optimiser construction imports torch's compiler stack (~2 s): pay it before any Start.
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        while True:
            run_id = self._queue.get()
            job = self._jobs[run_id]
            if job.control.stopping:
                continue  # stopped while queued: already marked so
            with self._lock:
                job.live.state, job.live.started = RunState.RUNNING, time.time()
            try:
                self._finish(job, RunState.DONE if job.work(job) else RunState.STOPPED)
            except StopRequested:
                self._finish(job, RunState.STOPPED)
            except Exception as error:  # a distillation run folder already records the failure
                with self._lock:
                    job.live.error = job.live.error or f"{type(error).__name__}: {error}"
                self._finish(job, RunState.FAILED)

    def _finish(self, job: _Job, state: str) -> None:
        with self._lock:
            job.live.state = state
            job.live.phase = state
        if state == RunState.STOPPED and job.work == self._distil:
            job.run.update_status(state=RunState.STOPPED, phase="stopped")
