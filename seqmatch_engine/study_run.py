"""Running a study: every planned run in turn (or at once on a Dask cluster, study_cluster.py), resumable, the
summary rewritten after each run. The process that runs a study owns it (its lock) until it ends."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, RunConfig, selection_iterations
from .records import RunState
from .runs import RunFolder
from .study import PlannedRun, StudyFolder
from .study_summary import format_table, summarise

RunHook = Callable[[str, int, int], None]  # (run id, index, total) before each run


def run_study(study: StudyFolder, experts_root: Path, observer=None, control=None,
              on_run: RunHook | None = None, executor=None) -> dict[str, Any]:
    """Run (or resume) every run of the study, then return the summary. Finished runs are skipped, an interrupted
    one resumes from its checkpoint; the summary is rewritten after each run. Locally the runs go one after another
    in plan order (their experts and nets as jobs on `executor`, default: local threads); on a Dask executor the
    runs themselves are jobs too and distil at once (study_cluster.py). Owns the study meanwhile (its lock:
    ownership.Owned, and nothing written, when another process runs it)."""
    with study.lock().hold():
        return _run_study(study, experts_root, observer, control, on_run, executor)


def _run_study(study: StudyFolder, experts_root: Path, observer, control, on_run: RunHook | None,
               executor) -> dict[str, Any]:
    from .control import RunControl, StopRequested
    from .executors import DaskExecutor
    from .seqmatch import Distiller

    spec, control = study.spec(), control or RunControl()
    total = spec.run_count()
    study.update_status(state=RunState.RUNNING, started=time.time(), total=total)

    def open_run(planned: PlannedRun) -> RunFolder:
        config = spec.run_config(planned.cell, planned.seed, planned.method, planned.lr_img)
        run = study.run(planned.id) or RunFolder.create(study.runs_root, config, planned.id)
        if not same_run(run.config(), config):
            raise ConfigError(f"{run.path} holds another config than the study's plan; delete that run folder")
        return run

    def starting(run_id: str, index: int, count: int) -> None:
        study.update_status(current=run_id, index=index)
        if on_run:
            on_run(run_id, index, count)

    def finish(planned: PlannedRun, run: RunFolder) -> None:
        record_run(study, planned, run, experts_root, executor, control)

    try:
        if isinstance(executor, DaskExecutor):
            from .study_cluster import run_on_cluster

            run_on_cluster(study, experts_root, executor, open_run, finish, control, starting)
        else:
            for index, planned in enumerate(spec.plan(study.chooser())):
                run = open_run(planned)
                starting(planned.id, index, total)
                if run.status().get("state") != RunState.DONE:
                    if Distiller(run, experts_root, observer, control, executor=executor).run() is None:
                        raise StopRequested()
                finish(planned, run)
    except StopRequested:
        study.update_status(state=RunState.STOPPED, current=None)
        raise
    except Exception as error:
        study.update_status(state=RunState.FAILED, current=None, error=f"{type(error).__name__}: {error}")
        raise
    except BaseException:  # Ctrl-C, SIGTERM (through the CLI's handler), SystemExit
        study.update_status(state=RunState.STOPPED, current=None, error=None)
        raise
    summary = summarise(study)
    study.save_summary(summary, format_table(summary))
    study.update_status(state=RunState.DONE, current=None, finished=time.time(), done=summary["runs_done"])
    return summary


def record_run(study: StudyFolder, planned: PlannedRun, run: RunFolder, experts_root: Path, executor, control) -> None:
    """After a run of the study finished: its seed's expert accuracy (once), the controls now due, the summary."""
    from .context import RunContext

    if str(planned.seed) not in study.expert_accuracy():
        study.save_expert_accuracy(planned.seed, expert_accuracy(RunContext(run.config(), experts_root,
                                                                            executor=executor)))
    for pending in runs_needing_controls(study):
        ctx = RunContext(pending.config(), experts_root, executor=executor)
        pending.save_controls(evaluate_controls(ctx, pending, control))
    summary = summarise(study)
    study.save_summary(summary, format_table(summary))
    study.update_status(done=summary["runs_done"])


def same_run(a: RunConfig, b: RunConfig) -> bool:
    """Whether two configs describe the same run: equal, or equal but for how the same selection points are written
    (select_every 25 or select_points 4 at 100 iterations), so a study made before select_points resumes."""
    def schedule(config: RunConfig) -> tuple:
        d = config.distill
        return tuple(tuple(selection_iterations(s.iterations, d.select_every, d.select_points)) for s in d.subsets)

    def rest(config: RunConfig) -> dict[str, Any]:
        raw = config.to_dict()
        raw["distill"].pop("select_every"), raw["distill"].pop("select_points")
        return raw

    return a == b or (schedule(a) == schedule(b) and rest(a) == rest(b))


def runs_needing_controls(study: StudyFolder) -> list[RunFolder]:
    """Finished SeqMatch runs whose controls are not measured yet: every one, or with an lr sweep only those at
    their cell's chosen lr (the runs the summary reports)."""
    spec = study.spec()
    if not spec.controls or "seqmatch" not in spec.methods:
        return []
    choose, pending = study.chooser(), []
    for planned in spec.plan(choose):
        if planned.method != "seqmatch" or (planned.tuning and choose(planned.cell, "seqmatch") != planned.lr_img):
            continue
        run = study.run(planned.id)
        if run and run.eval() and run.controls() is None:
            pending.append(run)
    return pending


def expert_accuracy(ctx) -> list[float]:
    """Test accuracy of the final epoch of each stage-1 expert of a run's recipe (read from the cache)."""
    from .evaluate import accuracy
    from .models import ConvNet

    data = ctx.data
    return [accuracy(ConvNet(ctx.spec, trajectory[-1].to(ctx.device)), data.test_images, data.test_labels)
            for trajectory in ctx.cached_stage1_experts()]


def evaluate_controls(ctx, run: RunFolder, control=None) -> dict[str, Any]:
    """Test accuracy of a SeqMatch set's evaluation-only controls (evaluate.CONTROLS), on the same evaluation nets
    (same seed tag) as the set itself, so that each control is paired with it."""
    from .evaluate import control_curricula

    cfg = ctx.config
    subsets = run.subsets()
    curricula = control_curricula([(s.images, s.labels) for s in subsets], [s.lr for s in subsets], ctx.data, cfg.seed)
    accuracy = {name: ctx.evaluate(stages, "convnet", cfg.eval.num_nets, "test", "synthetic", control=control).to_dict()
                for name, stages in curricula.items()}
    return {"accuracy": accuracy, "eval_nets": cfg.eval.num_nets}
