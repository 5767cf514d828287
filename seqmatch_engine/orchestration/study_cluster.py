"""A study's runs as jobs on a Dask cluster, so that its independent runs distil at once.

    driver (this process)                            workers
    for each run the plan has ready:                 distil_on_worker(RunJob):
        its seed's stage-1 experts (cluster jobs)        the run folder unpacked in a scratch folder,
        submit RunJob(the run folder's files)  ----->    Distiller with its experts and nets as jobs on
    as runs finish:                                       the same cluster (the task leaves its worker's
        install the returned files          <-----       thread pool while it waits for them), the
        controls, expert accuracy, summary                folder's files returned
    until the plan has nothing left (an lr sweep's later runs are ready once its tuning runs are in)

The driver alone writes the study folder: a worker writes only its scratch copy, and the driver installs
what comes back. A run distils on one worker thread with as many torch threads as this process uses, and
its jobs run single-threaded as local ones do, so every run gives the local bits. A worker that dies
takes its run with it and Dask runs it again from the files it was sent: nothing changes but the time
(and the run's messages say so).
Stopping sets a cluster-wide event that running runs obey at their next outer iteration.
"""
from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from seqmatch_engine.core.control import RunControl, StopRequested
from seqmatch_engine.maths.experts import recipe_key
from seqmatch_engine.maths.parallel import set_this_thread_cores
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.orchestration.driver import Distiller
from seqmatch_engine.orchestration.executors import DaskExecutor
from seqmatch_engine.orchestration.study_summary import chooser
from seqmatch_engine.storage.records import RunState
from seqmatch_engine.storage.runs import RunFolder

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunJob:
    """One study run to distil on a worker: its folder's files as they stand (config and status, and for an
    interrupted run its checkpoint), where experts are cached, the torch threads to distil with, and the name of
    the cluster event that stops it."""

    run_id: str
    files: dict[str, bytes]
    experts_root: str
    threads: int
    stop_event: str


class ClusterStop(RunControl):
    """A RunControl that also stops when a named Dask event is set (checked at each checkpoint)."""

    def __init__(self, event_name: str):
        super().__init__()
        import distributed  # optional (requirements-cluster.txt): only a cluster study needs it

        self.event = distributed.Event(event_name)

    def checkpoint(self) -> None:
        if self.event.is_set():
            self.stop()
        super().checkpoint()


def distil_on_worker(job: RunJob) -> dict[str, bytes]:
    """On a Dask worker: the run distilled to its end (experts and nets as jobs on the same cluster), returned as
    its folder's files. Raises StopRequested when the study was stopped."""
    import distributed  # optional (requirements-cluster.txt): only a cluster study needs it

    if not set_this_thread_cores(job.threads):
        torch.set_num_threads(job.threads)
    executor = DaskExecutor.from_client(distributed.get_client())
    with tempfile.TemporaryDirectory(prefix="seqmatch-run-") as scratch:
        run = RunFolder.unpack(Path(scratch), job.run_id, job.files)
        if Distiller(run, Path(job.experts_root), control=ClusterStop(job.stop_event), executor=executor).run() is None:
            raise StopRequested()
        return run.pack()


RunHook = Callable[[str, int, int], None]        # (run id, index, total) as each run is sent to the cluster
FinishHook = Callable[[Any, Any], None]          # (planned run, its RunFolder) once its files are installed


def run_on_cluster(study, experts_root: Path, executor: DaskExecutor, open_run: Callable, finish: FinishHook,
                   control: RunControl, on_run: RunHook | None = None) -> None:
    """Distil every unfinished run of `study` on the cluster, several at once, installing each as it returns and
    calling `finish` for it (and for runs found finished); `open_run(planned)` gives a planned run's folder."""
    import distributed  # optional (requirements-cluster.txt): only a cluster study needs it

    spec, client = study.spec(), executor.client
    stop = distributed.Event(f"seqmatch-study-stop-{uuid.uuid4().hex[:12]}", client=client)
    in_flight: dict[Any, tuple[Any, RunFolder]] = {}
    seen: set[str] = set()
    experts_ready: set[str] = set()
    lost: dict[str, list[str]] = {}  # run id -> workers lost while it was on the cluster
    sent = 0
    executor.lost_workers(force=True)
    try:
        while True:
            for planned in spec.plan(chooser(study, spec)):
                if planned.id in seen:
                    continue
                seen.add(planned.id)
                run = open_run(planned)
                if run.status().state == RunState.DONE:
                    finish(planned, run)
                    continue
                _stage1_experts(run.config(), experts_root, executor, control, experts_ready)
                if on_run:
                    on_run(planned.id, sent, spec.run_count())
                sent += 1
                job = RunJob(planned.id, run.pack(), str(experts_root), torch.get_num_threads(), stop.name)
                key = f"study-run-{planned.id}-{uuid.uuid4().hex[:8]}"
                future = client.submit(distil_on_worker, job, pure=False, key=key)
                in_flight[future] = (planned, run)
            if not in_flight:
                return
            try:
                done, _ = distributed.wait(list(in_flight), timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            control.checkpoint()
            for address in executor.lost_workers():
                for planned, _ in in_flight.values():
                    lost.setdefault(planned.id, []).append(address)
            for future in done:
                planned, run = in_flight.pop(future)
                run.install(future.result())  # a run's exception is raised here
                for address in lost.pop(planned.id, []):
                    run.add_message("warning", f"the Dask worker {address} was lost while this run was on the "
                                               f"cluster; Dask ran again what it held (same results, more time)")
                finish(planned, run)
    except BaseException:
        stop.set()  # running runs stop at their next outer iteration; waiting ones never start
        client.cancel(list(in_flight))
        raise


def _stage1_experts(config, experts_root: Path, executor: DaskExecutor, control: RunControl, ready: set[str]) -> None:
    """Train the run's stage-1 experts on the cluster before its runs go out (once per recipe), so that the runs
    of a seed, distilling at once, find them cached instead of each training them."""
    ctx = RunContext(config, experts_root, executor=executor)
    key = recipe_key(ctx.stage1_recipe())
    if key not in ready:
        ctx.stage1_experts(control=control)
        ready.add(key)
