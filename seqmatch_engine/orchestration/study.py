"""Running a study: its runs in plan order (or at once on a Dask cluster, study_cluster.py), each followed by its
seed's expert accuracy, the controls due and the summary. The spec is study_spec.py, the folder
study_folder.py, the summary study_summary.py.

Pairing: a seed's runs share everything but the method. Every method of a seed trains against the same cached
stage-1 experts, their evaluation nets are drawn from the same generators, and the random-real baseline is
measured once per (seed, IPC) and shared. Resuming a study skips finished runs and continues an interrupted one
from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from seqmatch_engine.core.config import ConfigError, RunConfig
from seqmatch_engine.core.control import ProgressFn, RunControl, StopRequested
from seqmatch_engine.core.phases import PhaseKind
from seqmatch_engine.core.study_spec import PlannedRun, same_run
from seqmatch_engine.maths.evaluate import accuracy, control_curricula
from seqmatch_engine.maths.models import ConvNet
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.orchestration.driver import Distiller, Event, EventKind, Observer
from seqmatch_engine.orchestration.executors import DaskExecutor
from seqmatch_engine.orchestration.study_cluster import run_on_cluster
from seqmatch_engine.orchestration.study_summary import chooser, format_table, summarise
from seqmatch_engine.storage.files import StorageError
from seqmatch_engine.storage.records import RunState
from seqmatch_engine.storage.runs import RunError, RunFolder
from seqmatch_engine.storage.study_folder import StudyFolder

RunHook = Callable[[str, int, int], None]  # (run id, index, total) before each run


def run_study(study: StudyFolder, experts_root: Path, observer=None, control=None,
              on_run: RunHook | None = None, executor=None, reuse: Sequence[StudyFolder] = ()) -> dict[str, Any]:
    """Run (or resume) every run of the study, then return the summary. Finished runs are skipped, an interrupted
    one resumes from its checkpoint; the summary is rewritten after each run. A run not started yet that a study
    of `reuse` has finished (the same config but for its name) is copied from there instead of run again. Locally
    the runs go one after another in plan order (their experts and nets as jobs on `executor`, default: local
    threads); on a Dask executor the runs themselves are jobs too and distil at once (study_cluster.py)."""

    spec, control = study.spec(), control or RunControl()
    total = spec.run_count()
    # the last attempt's error is past, and a kill during controls left their run named
    study.update_status(state=RunState.RUNNING, started=time.time(), total=total, error=None, controls=None)

    def open_run(planned: PlannedRun) -> RunFolder:
        config = spec.run_config(planned.cell, planned.seed, planned.method, planned.lr_img)
        run = study.run(planned.id)
        if run is None:
            twin = finished_twin(reuse, config)
            run = (RunFolder.copy_of(twin, study.runs_root, planned.id, config) if twin
                   else RunFolder.create(study.runs_root, config, planned.id))
        carry_expert_accuracy(study, reuse, run, planned.seed)
        if not same_run(run.config(), config):
            raise ConfigError(f"{run.path} holds another config than the study's plan; delete that run folder")
        return run

    def starting(run_id: str, index: int, count: int) -> None:
        study.update_status(current=run_id, index=index)
        if on_run:
            on_run(run_id, index, count)

    def finish(planned: PlannedRun, run: RunFolder) -> None:
        record_run(study, planned, run, experts_root, executor, control, observer)

    try:
        if isinstance(executor, DaskExecutor):

            run_on_cluster(study, experts_root, executor, open_run, finish, control, starting)
        else:
            for index, planned in enumerate(spec.plan(chooser(study, spec))):
                run = open_run(planned)
                starting(planned.id, index, total)
                if run.status().state != RunState.DONE:
                    if Distiller(run, experts_root, observer, control, executor=executor).run() is None:
                        raise StopRequested()
                finish(planned, run)
    except StopRequested:
        study.update_status(state=RunState.STOPPED, current=None, controls=None)
        raise
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the CLI's handler: a stop, not an error
        study.update_status(state=RunState.STOPPED, current=None, controls=None)
        raise
    except BaseException as error:
        study.update_status(state=RunState.FAILED, current=None, controls=None, error=f"{type(error).__name__}: {error}")
        raise
    summary = summarise(study)
    study.save_summary(summary, format_table(summary))
    study.update_status(state=RunState.DONE, current=None, finished=time.time(), done=summary["runs_done"])
    return summary


def carry_expert_accuracy(study: StudyFolder, sources: Sequence[StudyFolder], run: RunFolder, seed: int) -> None:
    """For a run copied from one of `sources`, that study's accuracy of the seed's experts, where `study` lacks it:
    the same run has the same experts, which may not be cached in this home (another machine)."""
    origin = run.origin()
    if str(seed) in study.expert_accuracy() or not origin:
        return
    for source in sources:
        values = source.expert_accuracy().get(str(seed))
        if values and Path(origin).is_relative_to(source.path.resolve()):
            study.save_expert_accuracy(seed, values)
            return


def finished_twin(sources: Sequence[StudyFolder], config: RunConfig) -> RunFolder | None:
    """A finished run of one of `sources` that is the same run as `config` but for its name, or None."""
    for source in sources:
        for run in source.runs():
            try:
                if run.finished() and same_run(dataclasses.replace(run.config(), name=config.name), config):
                    return run
            except (ConfigError, StorageError, RunError):
                continue  # a damaged run is not reused; this study runs its own
    return None


def record_run(study: StudyFolder, planned: PlannedRun, run: RunFolder, experts_root: Path, executor, control,
               observer: Observer | None = None) -> None:
    """After a run of the study finished: its seed's expert accuracy (once), the controls now due (shown to
    `observer` as a phase with a bar per control, and in the study's status), the summary."""

    if str(planned.seed) not in study.expert_accuracy():
        study.save_expert_accuracy(planned.seed, expert_accuracy(RunContext(run.config(), experts_root,
                                                                            executor=executor)))
    observer = observer or (lambda event: None)

    def progress(name: str) -> ProgressFn:
        return lambda done, total: observer(Event(EventKind.PROGRESS, data={"task": f"control: {name}",
                                                                             "done": done, "total": total}))

    for pending in runs_needing_controls(study):
        study.update_status(controls=pending.id)
        observer(Event(EventKind.PHASE, data={"name": f"controls of {pending.id}", "phase_kind": PhaseKind.EVALUATING}))
        ctx = RunContext(pending.config(), experts_root, executor=executor)
        pending.save_controls(evaluate_controls(ctx, pending, control, progress))
    study.update_status(controls=None)
    summary = summarise(study)
    study.save_summary(summary, format_table(summary))
    study.update_status(done=summary["runs_done"])


def runs_needing_controls(study: StudyFolder) -> list[RunFolder]:
    """Finished SeqMatch runs whose controls are not measured yet: every one, or with an lr sweep only those at
    their cell's chosen lr (the runs the summary reports)."""
    spec = study.spec()
    if not spec.controls:
        return []
    choose, pending = chooser(study, spec), []
    for planned in spec.plan(choose):
        if not spec.measures_controls(planned, choose(planned.cell, planned.method)):
            continue
        run = study.run(planned.id)
        if run and run.eval() and run.controls() is None:
            pending.append(run)
    return pending


def expert_accuracy(ctx) -> list[float]:
    """Test accuracy of the final epoch of each stage-1 expert of a run's recipe (read from the cache)."""

    data = ctx.data
    return [accuracy(ConvNet(ctx.spec, trajectory[-1].to(ctx.device)), data.test_images, data.test_labels)
            for trajectory in ctx.cached_stage1_experts()]


def evaluate_controls(ctx, run: RunFolder, control=None,
                      progress: Callable[[str], ProgressFn] | None = None) -> dict[str, Any]:
    """Test accuracy of a SeqMatch set's evaluation-only controls (evaluate.CONTROLS), on the same evaluation nets
    (same seed tag) as the set itself, so that each control is paired with it; `progress(name)` gives each
    control's progress callback."""

    cfg = ctx.config
    subsets = run.subsets()
    curricula = control_curricula([(s.images, s.labels) for s in subsets], [s.lr for s in subsets], ctx.data, cfg.seed,
                                  ctx.soft_labels)
    accuracy = {name: ctx.evaluate(stages, "convnet", cfg.eval.num_nets, "test", "synthetic",
                                   progress(name) if progress else None, control).to_dict()
                for name, stages in curricula.items()}
    return {"accuracy": accuracy, "eval_nets": cfg.eval.num_nets}
