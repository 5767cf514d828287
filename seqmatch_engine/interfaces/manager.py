"""Background jobs: one worker thread runs queued run folders one at a time.

A UI (or a test) submits configs, then polls `JobManager.live(run_id)` for a snapshot of what
the driver last reported (live.py). Observers only copy small values under a lock, so the distillation
loop never waits for a reader. Pause / resume / stop go through each job's RunControl. A job owns what
it trains (ownership.py): while another process holds the run, the study, or this home's job queue
(another app), the job waits, queued, and its live state says for whom.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Callable

import torch

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.core.study_spec import StudySpec
from seqmatch_engine.interfaces.live import LiveObserver, LiveState, live_from_folder
from seqmatch_engine.interfaces.queries import Library
from seqmatch_engine.orchestration.driver import Distiller, Event, EventKind, RunControl, StopRequested
from seqmatch_engine.orchestration.executors import Executor
from seqmatch_engine.orchestration.run_diagnostics import DiagnosticsOptions, RunDiagnostics, compute, computed
from seqmatch_engine.orchestration.study import run_study
from seqmatch_engine.storage.files import StorageError
from seqmatch_engine.storage.ownership import Owned, Owner, OwnerLock
from seqmatch_engine.storage.records import RunState
from seqmatch_engine.storage.runs import RunError, RunFolder, list_runs
from seqmatch_engine.storage.study_folder import StudyFolder


class JobKind(Enum):
    """The kinds of work the queue runs. Adding one: a member here and a submit_* method that builds its work
    function and queues it with _queue_job."""

    RUN = "run"                  # distil a run folder (to the end, or on from its checkpoint)
    STUDY = "study"              # a study's runs in plan order, then its controls and summary
    DIAGNOSTICS = "diagnostics"  # G2-G4 of a finished run


def job_id(kind: JobKind, target: str) -> str:
    """The id a job is polled by: a run's own id for its distillation, '<kind>:<target>' for other work."""
    return target if kind is JobKind.RUN else f"{kind.value}:{target}"


@dataclass
class _Job:
    kind: JobKind
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
        self.library = Library(home)  # what the views read; the roots of this home
        self.runs_root, self.experts_root = self.library.runs_root, self.library.experts_root
        self.studies_root = self.library.studies_root
        self.queue_lock = OwnerLock(paths.queue_lock(home), f"the job queue of {paths.runs_root(home).parent.resolve()}",
                                    "Apps on one home run one job at a time between them.")
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
        return self._queue_job(_Job(JobKind.RUN, run, RunControl(), LiveState(job_id(JobKind.RUN, run.id)),
                                    self._distil))

    def submit_diagnostics(self, run_id: str, options: DiagnosticsOptions, which: tuple[str, ...] | None = None,
                           partner_id: str | None = None) -> str:
        """Queue the diagnostics in `which` (default: every one computed after a run) for a finished run (G2 of
        static MTT also on the retrained-expert families of SeqMatch run `partner_id`); returns the job id to poll
        with `live`."""
        run = self.run(run_id)
        partner = self.run(partner_id) if partner_id else None
        key = job_id(JobKind.DIAGNOSTICS, run.id)
        existing = self._jobs.get(key)
        if existing and existing.live.state in (RunState.QUEUED, RunState.RUNNING):
            return key

        def work(job: _Job) -> bool:
            diagnostics = RunDiagnostics(job.run, self.experts_root, options, executor=self.executor)
            for name in which or computed():
                def progress(done: int, total: int, name: str = name) -> None:
                    job.control.checkpoint()
                    with self._lock:
                        job.live.phase, job.live.progress = f"computing {name.upper()}", (done, total)

                with self._lock:
                    job.live.phase, job.live.progress = f"computing {name.upper()}", None
                compute(diagnostics, name, progress, partner)
            return True

        return self._queue_job(_Job(JobKind.DIAGNOSTICS, run, RunControl(), LiveState(key), work))

    def submit_study(self, spec: StudySpec) -> str:
        """Queue (or resume) a study: its runs train one after the other like any run; returns the job id."""
        study = StudyFolder.create_or_open(self.studies_root, spec)
        key = job_id(JobKind.STUDY, study.id)
        existing = self._jobs.get(key)
        if existing and existing.live.state.active:
            return key

        def work(job: _Job) -> bool:
            def on_run(run_id: str, index: int, total: int) -> None:
                with self._lock:
                    job.live.study_run, job.live.progress = f"run {index + 1}/{total}: {run_id}", (index, total)

            def observer(event: Event) -> None:
                if event.kind == EventKind.PHASE:
                    with self._lock:
                        job.live.phase, job.live.phase_kind = event.data["name"], event.data.get("phase_kind")

            with self._owning(job, study.lock()):
                run_study(study, self.experts_root, observer, job.control, on_run, self.executor)
            return True

        return self._queue_job(_Job(JobKind.STUDY, None, RunControl(), LiveState(key), work))

    def _queue_job(self, job: _Job) -> str:
        with self._lock:
            self._jobs[job.live.run_id] = job
        self._queue.put(job.live.run_id)
        return job.live.run_id

    def _distil(self, job: _Job) -> bool:
        with self._owning(job, job.run.lock()):
            if job.run.status().state == RunState.DONE:  # finished by the process this job waited for
                return True
            observer = LiveObserver(job.live, self._lock)
            return Distiller(job.run, self.experts_root, observer, job.control, executor=self.executor).run() is not None

    def _owning(self, job: _Job, lock: OwnerLock):
        """Hold `lock` for `job`, waiting (queued, the status card saying for whom) while another process holds it;
        a stop while waiting raises StopRequested."""
        def on_wait(owner: Owner | None) -> None:
            with self._lock:
                job.live.state, job.live.phase = RunState.QUEUED, "queued"
                job.live.waiting_for = (f"{lock.what} is in use by {owner.describe() if owner else 'another process'}"
                                        f"; it starts here when that one ends")

        @contextlib.contextmanager
        def held():
            try:
                with lock.hold(wait=True, on_wait=on_wait, stopping=lambda: job.control.stopping):
                    with self._lock:
                        job.live.state, job.live.waiting_for = RunState.RUNNING, None
                    yield
            except Owned:
                raise StopRequested() from None

        return held()

    def delete(self, run_id: str) -> None:
        """Delete a run folder; refused (RunError) while this app runs or queues it."""
        run = self.run(run_id)
        job = self._jobs.get(run.id)
        if job and job.live.state.active:
            raise RunError("stop this run before deleting it")
        run.delete()

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
                return LiveState(run.id, state=RunState.UNREADABLE, phase="unreadable", error=str(error))
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
                with self._owning(job, self.queue_lock):  # apps on one home run one job at a time between them
                    finished = job.work(job)
                self._finish(job, RunState.DONE if finished else RunState.STOPPED)
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
            job.live.waiting_for = None
        if state == RunState.STOPPED and job.kind is JobKind.RUN and job.run.lock().owner() is None:
            # never over another owner's status
            job.run.update_status(state=RunState.STOPPED, phase="stopped", phase_kind=None)
