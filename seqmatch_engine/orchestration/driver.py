"""The stage driver: SeqMatch over K subsets (static MTT is K = 1), from experts to evaluation.

    for k in 1..K:
        experts_k = stage-1 experts                      (k = 1, or expert_source "window")
                  | nets pre-trained on U_1..U_{k-1}, then trained on real data ("retrained")
        S_k      = method.step, again and again, on U_{k-1} + S_k (only S_k and alpha_k learn);
                   hooks after each step: G1, metrics and publishing, validation selection, checkpoint
        keep the S_k with the best validation accuracy
    evaluate the curriculum U_1..U_K (and a random real set of the same IPC) on the test split

The parts: a RunContext (config, data, net, recipes, executor), a Method (methods.py), the hooks
below, and the RunFolder, which alone reads and writes the run's files. Observers get typed Events;
a RunControl pauses, resumes and stops the loop between outer iterations (and jobs between epochs).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from seqmatch_engine.core.config import selection_iterations, selects
from seqmatch_engine.core.control import RunControl, StopRequested
from seqmatch_engine.core.labels import hard, is_soft
from seqmatch_engine.core.phases import PhaseKind, TextEnum
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.data.prepare import PreparedData
from seqmatch_engine.maths.evaluate import CurriculumStage, curriculum_from_subsets
from seqmatch_engine.maths.matching import ConvNetStudent, DivergenceError
from seqmatch_engine.maths.memory import choose_memory_mode
from seqmatch_engine.methods import Method, StageSetting, StepRecord, class_labels, initial_images, make_method
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.orchestration.eta import run_plan
from seqmatch_engine.orchestration.executors import Executor
from seqmatch_engine.orchestration.gradient_recorder import GradientRecorder
from seqmatch_engine.orchestration.jobs import NetState
from seqmatch_engine.storage.records import (
    Checkpoint,
    DivergenceRecord,
    EvalResult,
    IterationRecord,
    RunState,
    SelectionRecord,
)
from seqmatch_engine.storage.runs import RunError, RunFolder, Subset

__all__ = ["Distiller", "Event", "EventKind", "RunControl", "StopRequested", "class_labels", "evaluate_run",
           "initial_images"]


class EventKind(TextEnum):
    PHASE = "phase"                # data: name, phase_kind (None once ended), extras (memory mode, ...)
    PROGRESS = "progress"          # data: task ("experts" | "evaluation" | a study's "control: NAME"), done, total
    PLAN = "plan"                  # data: phases (eta.PhasePlan list: the run's work still to do)
    PREVIEW = "preview"            # data: images {stage: initial (or resumed) images of every stage to learn}
    STAGE_START = "stage_start"    # data: images, labels (soft label logits, or None for class labels)
    ITERATION = "iteration"        # data: loss, lr, start_epoch, images and labels (or None), total, eta_s
    SELECTION = "selection"        # data: val_accuracy, best_accuracy, best_iteration
    STAGE_DONE = "stage_done"      # data: info, images, labels
    EVALUATION = "evaluation"      # data: {set, arch, mean, std, values}
    DONE = "done"                  # data: eval.json's content
    ERROR = "error"                # data: message, kind_name


@dataclass
class Event:
    """Something the driver did (see EventKind for each kind's data)."""

    kind: EventKind
    stage: int | None = None
    iteration: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


Observer = Callable[[Event], None]


@dataclass
class Best:
    """The best S_k so far by validation accuracy (-1 before any validation: the initial images)."""

    accuracy: float
    iteration: int
    images: torch.Tensor
    labels: torch.Tensor
    lr: float


@dataclass
class Stage:
    """One subset being learned: what the loop, the method and the hooks share."""

    k: int
    iterations: int
    method: Method              # owns S_k's images, labels and lr as they learn
    generator: torch.Generator
    iteration: int
    best: Best
    frozen: torch.Tensor        # (n_prior, C, H, W): U_{k-1}, never changed
    frozen_labels: torch.Tensor  # (n_prior,) class indices or (n_prior, classes) soft logits of U_{k-1}
    prior: list[Subset]
    started_at: int = 0
    started: float = field(default_factory=time.perf_counter)

    def images(self) -> torch.Tensor:
        return self.method.learned()[0]

    def labels_k(self) -> torch.Tensor:
        return self.method.learned()[1]

    def lr(self) -> float:
        return self.method.learned()[2]

    def subset(self) -> Subset:
        """S_k as it stands."""
        images, labels, lr = self.method.learned()
        return Subset(images, labels, lr)

    def soft_labels(self) -> torch.Tensor | None:
        """S_k's soft label logits as they stand (for display), None when its labels are fixed classes."""
        labels = self.labels_k()
        return labels.clone() if is_soft(labels) else None


Hook = Callable[["Stage", StepRecord], None]  # after each outer iteration: (the stage, what the step did)


class Distiller:
    """Runs one run folder to completion (or to a stop), resuming from what the folder holds. After every outer
    iteration its hooks run in order: G1, metrics and publishing, validation selection, checkpoints."""

    def __init__(self, run: RunFolder, experts_root: Path, observer: Observer | None = None,
                 control: RunControl | None = None, data: PreparedData | None = None,
                 executor: Executor | None = None):
        self.run_folder = run
        self.config = run.config()
        self.ctx = RunContext(self.config, experts_root, data, executor)
        self.observer = observer or (lambda event: None)
        self.control = control or RunControl()
        self._phase: str | None = None
        self._phase_started = 0.0
        self._phase_seconds: dict[str, float] = dict(run.status().phase_seconds)
        self._phase_kind: PhaseKind | None = None
        self.ctx.on_filed = self._record_filed_time

    # -- plumbing ----------------------------------------------------------------------------------
    def emit(self, kind: EventKind, stage: int | None = None, iteration: int | None = None, **data: Any) -> None:
        self.observer(Event(kind, stage, iteration, data))

    def phase(self, name: str, kind: PhaseKind, stage: int | None = None, **extra: Any) -> None:
        self._phase_kind = kind
        self.run_folder.update_status(state=RunState.RUNNING, phase=name, phase_kind=kind, stage=stage,
                                      phase_seconds=self._time_phase(name), executor=self.ctx.executor.describe(),
                                      **extra)
        self.emit(EventKind.PHASE, stage, name=name, phase_kind=kind, executor=self.ctx.executor.describe(), **extra)

    def _time_phase(self, name: str | None) -> dict[str, float]:
        """Close the current phase's clock, start `name`'s; wall seconds per phase, summed over resumes."""
        now = time.perf_counter()
        if self._phase is not None:
            self._phase_seconds[self._phase] = round(self._phase_seconds.get(self._phase, 0.0)
                                                     + now - self._phase_started, 3)
        self._phase, self._phase_started = name, now
        return dict(self._phase_seconds)

    def phase_seconds_so_far(self) -> dict[str, float]:
        """The phases' wall seconds with the current phase's running time added (its clock keeps running): what a
        checkpoint, a filed expert or evaluation net records, so that a process killed after it loses only the work
        it will redo."""
        seconds = dict(self._phase_seconds)
        if self._phase is not None:
            seconds[self._phase] = round(seconds.get(self._phase, 0.0) + time.perf_counter() - self._phase_started, 3)
        return seconds

    def _record_filed_time(self) -> None:
        """An expert or an evaluation net was filed: record the phase time so far. Not while distilling, where a
        selection net is filed before its iteration's checkpoint, so a resumed run would redo and time again the
        iterations since the last checkpoint (distilling records its time at each checkpoint)."""
        if self._phase_kind in (PhaseKind.EXPERTS, PhaseKind.EVALUATING):
            self.run_folder.update_status(phase_seconds=self.phase_seconds_so_far())

    def progress(self, task: str, stage: int | None = None) -> Callable[[int, int], None]:
        return lambda done, total: self.emit(EventKind.PROGRESS, stage, task=task, done=done, total=total)

    # -- the whole run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        """Distil every subset, then evaluate. Returns eval.json's content (None when stopped). Owns the run folder
        meanwhile (its lock: ownership.Owned, and nothing written, when another process trains it)."""
        with self.run_folder.lock().hold(), self.ctx.executor.watch(self.worker_lost):
            return self._run()

    def worker_lost(self, address: str) -> None:
        self.run_folder.add_message("warning", f"the Dask worker {address} was lost while this run's jobs ran; Dask "
                                               f"runs its jobs again on the other workers (same results, more time)")

    def _run(self) -> dict[str, Any] | None:
        cfg, ctx = self.config, self.ctx
        try:
            self.run_folder.update_status(error=None)  # a failed run resumed: its last error is past
            self.phase("loading data", PhaseKind.LOADING)
            self.run_folder.save_transform(ctx.data.transform)
            self.run_folder.update_status(class_names=list(ctx.data.class_names), dataset=ctx.data.name)
            subsets = self.run_folder.subsets()
            self.emit(EventKind.PLAN, phases=run_plan(cfg, len(ctx.data.train_images), ctx.data.num_classes,
                                                      len(subsets)))
            self.emit(EventKind.PREVIEW, images=self.preview(len(subsets)))
            stage1 = None
            for k in range(len(subsets), len(cfg.distill.subsets)):
                if k == 0 or cfg.distill.expert_source == "window":
                    if stage1 is None:
                        self.expert_phase("experts 1", 0, ctx.stage1_recipe())
                        stage1 = ctx.stage1_experts(self.progress("experts", 0), self.control)
                    experts = stage1
                else:
                    self.expert_phase(f"experts {k + 1}", k, ctx.retrained_recipe(k, subsets))
                    experts = ctx.retrained_experts(k, subsets, self.progress("experts", k), self.control)
                subsets.append(self.distil_stage(k, experts, subsets))
            self.phase("evaluating", PhaseKind.EVALUATING)
            result = evaluate_run(ctx, self.run_folder, subsets, self.emit, self.control)
            self.run_folder.update_status(state=RunState.DONE, phase="done", phase_kind=None, finished=time.time(),
                                          phase_seconds=self._time_phase(None))
            self.emit(EventKind.DONE, data=result)
            return result
        except StopRequested:
            self.run_folder.update_status(state=RunState.STOPPED, phase="stopped", phase_kind=None,
                                          phase_seconds=self._time_phase(None))
            self.emit(EventKind.PHASE, name="stopped", phase_kind=None)
            return None
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the CLI's handler
            self.run_folder.update_status(state=RunState.STOPPED, phase="stopped", phase_kind=None,
                                          phase_seconds=self._time_phase(None))
            raise
        except Exception as error:
            try:
                self.run_folder.update_status(state=RunState.FAILED, phase="failed", phase_kind=None,
                                              error=f"{type(error).__name__}: {error}",
                                              phase_seconds=self._time_phase(None))
            except RunError:
                pass  # the folder itself is gone: nothing to record it in
            self.emit(EventKind.ERROR, message=str(error), kind_name=type(error).__name__)
            raise

    def preview(self, first: int) -> dict[int, torch.Tensor]:
        """The images every stage from `first` on starts from (its checkpoint's, or its initial real images),
        shown while experts train, so a cold start shows something true at once. An objective that picks its
        initial images with the experts (DATM) has none to show before they exist."""
        cfg, ctx = self.config, self.ctx
        checkpoint = self.run_folder.checkpoint_images()
        known = {checkpoint[0]: checkpoint[1]} if checkpoint and checkpoint[0] >= first else {}
        if cfg.distill.objective != "mtt":
            return known
        return {k: known.get(k, initial_images(ctx.data, cfg.distill.subsets[k].ipc, cfg.distill.init,
                                               make_generator(cfg.seed, "init", k)))
                for k in range(first, len(cfg.distill.subsets))}

    def expert_phase(self, name: str, stage: int, recipe: dict[str, Any]) -> None:
        """Enter an experts phase, with how many of the experts are cached (or shipped); when experts of the same
        settings but other code are passed over, say so in the run's messages and the phase event."""
        count = self.config.experts.num_experts
        note = self.ctx.cache.retrain_note(recipe, count)
        if note:
            self.run_folder.add_message("info", note)
        self.phase(name, PhaseKind.EXPERTS, stage, experts_total=count,
                   experts_cached=self.ctx.cache.cached_count(recipe, count), **({"message": note} if note else {}))

    # -- one subset: the stage loop ----------------------------------------------------------------------
    def distil_stage(self, k: int, experts: torch.Tensor, prior: list[Subset]) -> Subset:
        """Learn S_{k+1} (k is 0-based) against `experts` (n, E+1, P) with `prior` subsets frozen."""
        stage = self.open_stage(k, prior, self.method(k), experts)
        g1 = self.g1_recorder(stage)
        hooks: list[Hook] = [g1.after_step, self._after_step_metrics, Selection(self).after_step,
                             Checkpoints(self).after_step]
        self.emit(EventKind.STAGE_START, k, stage.iteration, images=stage.images().clone(), labels=stage.soft_labels())
        if stage.started_at == 0:  # the timeline starts with the images as they were before any step
            self.run_folder.save_snapshot(k, 0, stage.images(), stage.lr(), stage.soft_labels())
        for iteration in range(stage.started_at, stage.iterations):
            self.control.checkpoint()
            try:  # G1 measures, never changes, the step
                record = stage.method.step(experts, stage.frozen, stage.frozen_labels, stage.generator, iteration,
                                           record_gradients=g1.due(iteration + 1))
            except DivergenceError as error:
                return self.stop_diverged(stage, iteration, error)
            stage.iteration = iteration + 1
            for hook in hooks:
                hook(stage, record)
        best = stage.best
        kept = Subset(best.images, best.labels, best.lr) if selects(self.config.distill) else stage.subset()
        return self.finish_stage(stage, Subset(kept.images.clone(), kept.labels.clone(), float(kept.lr)))

    def method(self, k: int) -> Method:
        """Stage k's method (distill.objective) with its fused student in the memory mode that fits (shown in the
        status card)."""
        cfg, data, spec = self.config, self.ctx.data, self.ctx.spec
        sub, dist = cfg.distill.subsets[k], cfg.distill
        batch_syn = dist.batch_syn or data.num_classes * sub.ipc
        images = data.num_classes * sum(s.ipc for s in dist.subsets[:k + 1])  # U_{k-1} and S_k
        memory = choose_memory_mode(dist.memory_mode, spec, batch_syn, dist.syn_steps, images, self.ctx.device)
        self.phase(f"distilling S{k + 1}", PhaseKind.DISTILLING, k, iterations=sub.iterations, memory_mode=memory.mode,
                   memory_note=memory.describe())
        setting = StageSetting(tuple(sub.interval), dist.expert_epochs, dist.syn_steps, batch_syn, dist.max_lr,
                               data.image_size, dist.lr_img, dist.lr_lr, dist.momentum, self.ctx.pixel_limit)
        return make_method(cfg, ConvNetStudent(spec, memory.mode, memory.replay), setting)

    def g1_recorder(self, stage: Stage) -> "G1":
        cfg = self.config
        parts = [hard(s.labels) for s in stage.prior] + [hard(stage.labels_k())]
        recorder = GradientRecorder(self.run_folder.path, stage.k, parts,
                                    cfg.distill.nominal_groups if cfg.schedule == "static" else None,
                                    cfg.distill.diagnose_every, stage.iteration)
        return G1(recorder)

    def open_stage(self, k: int, prior: list[Subset], method: Method, experts: torch.Tensor) -> Stage:
        """Stage k fresh (the method's initial images and labels, its own seeded generator) or resumed from the
        run's checkpoint."""
        cfg, ctx = self.config, self.ctx
        sub = cfg.distill.subsets[k]
        resumed = self.run_folder.resume_point(k)
        if resumed is None:
            images, labels = method.initial(ctx.data, experts, sub.ipc, make_generator(cfg.seed, "init", k))
            for note in method.notes:
                self.run_folder.add_message("warning", f"S{k + 1}: {note}")
            method.begin(images, labels, sub.lr_init)
            generator, best = make_generator(cfg.seed, "distill", k), Best(-1.0, 0, images.clone(), labels.clone(),
                                                                           sub.lr_init)
        else:
            state = {name: tensor.to(ctx.device) for name, tensor in resumed.state.items()}
            if "labels" not in state:  # a checkpoint from before methods owned their labels: MTT's fixed classes
                state["labels"] = class_labels(ctx.data.num_classes, sub.ipc, ctx.device)
            method.load_state_dict(state)
            best_labels = state["labels"] if resumed.best_labels is None else resumed.best_labels.to(ctx.device)
            generator = resumed.generator
            best = Best(resumed.best_accuracy, resumed.best_iteration, resumed.best_images.to(ctx.device), best_labels,
                        resumed.best_lr)
            self.run_folder.add_message("info", f"resumed S{k + 1} at iteration {resumed.iteration} of {sub.iterations}")
        learned = method.learned()[1]
        frozen = torch.cat([s.images.to(ctx.device) for s in prior]) if prior else learned.new_empty(0).float()
        frozen_labels = torch.cat([s.labels.to(ctx.device) for s in prior]) if prior else learned[:0]
        return Stage(k, sub.iterations, method, generator, resumed.iteration if resumed else 0, best, frozen,
                     frozen_labels, prior, started_at=resumed.iteration if resumed else 0)

    def _after_step_metrics(self, stage: Stage, record: StepRecord) -> None:
        """Log the iteration to metrics.jsonl and publish it (with the images every publish_every iterations)."""
        done, dist = stage.iteration, self.config.distill
        rate = (time.perf_counter() - stage.started) / (done - stage.started_at)
        self.run_folder.log(IterationRecord(stage.k, done, record.loss, record.lr, record.start_epoch, record.expert,
                                            rate))
        publish = done % dist.publish_every == 0 or done == stage.iterations
        self.emit(EventKind.ITERATION, stage.k, done, loss=record.loss, lr=record.lr, start_epoch=record.start_epoch,
                  images=stage.images().clone() if publish else None,
                  labels=stage.soft_labels() if publish else None, total=stage.iterations,
                  eta_s=rate * (stage.iterations - done))

    def stop_diverged(self, stage: Stage, iteration: int, error: DivergenceError) -> Subset:
        """End a stage at a divergence, keeping images known to be sane: the best validated ones, else the
        initial ones (the last images before the error may already be far off: exploding pixels grow for
        several iterations before any check fires); record why, so that later stages and the report know."""
        best = stage.best
        kept = (f"the best validated images (iteration {best.iteration})" if best.accuracy >= 0
                else "the initial images (nothing was validated before)")
        text = f"S{stage.k + 1} stopped at iteration {iteration + 1}: {error}. Kept {kept}, lr {best.lr:.4g}."
        self.run_folder.add_message("warning", text)
        self.run_folder.update_status(diverged=[*self.run_folder.status().diverged, stage.k])
        self.run_folder.log(DivergenceRecord(stage.k, iteration + 1, str(error)))
        self.emit(EventKind.PHASE, stage.k, name=f"S{stage.k + 1} diverged", phase_kind=PhaseKind.DISTILLING, message=text)
        return self.finish_stage(stage, Subset(best.images.clone(), best.labels.clone(), float(best.lr)))

    def finish_stage(self, stage: Stage, subset: Subset) -> Subset:
        """Save S_k and hand it on as saved: its lr rounded to the float32 it is stored as, so that a run resumed
        after this stage (which reads it back) evaluates exactly what an unbroken run does."""
        subset = Subset(subset.images, subset.labels, float(torch.tensor(subset.lr, dtype=torch.float32)))
        info = {"stage": stage.k, "ipc": self.config.distill.subsets[stage.k].ipc, "lr": subset.lr,
                "best_iteration": stage.best.iteration, "best_val_accuracy": stage.best.accuracy}
        self.run_folder.save_subset(stage.k, subset)
        self.run_folder.clear_checkpoint()
        self.emit(EventKind.STAGE_DONE, stage.k, data=info, images=subset.images.clone(),
                  labels=subset.labels.clone() if is_soft(subset.labels) else None)
        return subset


# -- the default hooks ---------------------------------------------------------------------------------------
class Selection:
    """At the stage's selection points (config.selection_iterations: every `distill.select_every` iterations and
    at the end, or `distill.select_points` evenly spaced points): the validation accuracy of the curriculum so
    far with the current S_k, the mean of `eval.select_nets` nets; keeps the best S_k. Every candidate of a
    stage is scored by the same nets (same initialisations, minibatches and augmentations), so comparisons
    between candidates are paired; ties keep the earlier candidate. Never looks at test data."""

    def __init__(self, driver: Distiller):
        self.driver = driver
        self.starts: list[NetState] | None = None  # the nets after U_1..U_{k-1} (one Selection per stage)

    def after_step(self, stage: Stage, record: StepRecord) -> None:
        dist, done = self.driver.config.distill, stage.iteration
        if done not in selection_iterations(stage.iterations, dist.select_every, dist.select_points):
            return
        if stage.best.accuracy < 0:  # the initial images, measured here so that the first steps show at once
            best = stage.best
            self.score(stage, best.iteration, Subset(best.images, best.labels, best.lr))
        self.score(stage, done, stage.subset())

    def score(self, stage: Stage, iteration: int, candidate: Subset) -> None:
        driver = self.driver
        cfg, ctx = driver.config, driver.ctx
        subsets = [*stage.prior, candidate]
        curriculum = curriculum_from_subsets([(s.images, s.labels) for s in subsets], [s.lr for s in subsets])
        tag = f"select-{stage.k}"
        starts = self.after_earlier_stages(curriculum[:-1], tag)
        accuracy = ctx.evaluate(curriculum[-1:] if starts else curriculum, "convnet", cfg.eval.select_nets, "val",
                                tag, control=driver.control, starts=starts).mean
        improved = accuracy > stage.best.accuracy
        if improved:
            stage.best = Best(accuracy, iteration, candidate.images.clone(), candidate.labels.clone(), candidate.lr)
        driver.run_folder.log(SelectionRecord(stage.k, iteration, accuracy, improved))
        driver.emit(EventKind.SELECTION, stage.k, iteration, val_accuracy=accuracy,
                    best_accuracy=stage.best.accuracy, best_iteration=stage.best.iteration)

    def after_earlier_stages(self, earlier: list[CurriculumStage], tag: str) -> list[NetState] | None:
        """The selection nets trained through U_1..U_{k-1}: the same for every candidate of this stage (same
        nets, data and draws), so trained once per stage; going on from them gives the same bits."""
        if not earlier:
            return None
        if self.starts is None:
            driver = self.driver
            self.starts = driver.ctx.train_partway(earlier, "convnet", driver.config.eval.select_nets, tag,
                                                   control=driver.control)
        return self.starts


class Checkpoints:
    """Every `distill.snapshot_every` iterations (and at the end): a timeline snapshot and a resumable
    checkpoint (pixels, lr, optimiser momenta, generator state, best so far)."""

    def __init__(self, driver: Distiller):
        self.driver = driver

    def after_step(self, stage: Stage, record: StepRecord) -> None:
        every, done = self.driver.config.distill.snapshot_every, stage.iteration
        if done % every and done != stage.iterations:
            return
        run = self.driver.run_folder
        run.save_snapshot(stage.k, done, stage.images(), stage.lr(), stage.soft_labels())
        best = stage.best
        run.save_checkpoint(Checkpoint(stage.k, done, stage.method.state_dict(), stage.generator.get_state(),
                                       best.accuracy, best.iteration, best.images, best.lr, best.labels))
        run.update_status(state=RunState.RUNNING, phase=f"distilling S{stage.k + 1}", phase_kind=PhaseKind.DISTILLING,
                          stage=stage.k, iteration=done, iterations=stage.iterations,
                          phase_seconds=self.driver.phase_seconds_so_far())


class G1:
    """Records the per-subset gradient similarity every `distill.diagnose_every` iterations."""

    def __init__(self, recorder: GradientRecorder):
        self.recorder = recorder

    def due(self, iteration: int) -> bool:
        return self.recorder.due(iteration)

    def after_step(self, stage: Stage, record: StepRecord) -> None:
        self.recorder.record(stage.iteration, record.image_grads, start_epoch=record.start_epoch, loss=record.loss)


# -- evaluation ----------------------------------------------------------------------------------------------
def evaluate_run(ctx: RunContext, run: RunFolder, subsets: list[Subset], emit: Callable[..., None],
                 control: RunControl | None = None, name: str | None = None) -> dict[str, Any]:
    """Test accuracy of the learned curriculum and of a random real set of the same IPC (evaluations met before,
    e.g. the baseline a comparison's other run measured, are read back); writes eval.json (or, for settings other
    than the run's own, the evaluation `name` beside it) and returns its content. A set with soft labels is also
    measured with its top classes as hard labels, and its baseline also with soft labels from the same experts (the
    fair baseline of a soft-label method); each pair uses the same nets."""
    cfg = ctx.config
    lrs = [s.lr for s in subsets]
    curricula = {"synthetic": curriculum_from_subsets([(s.images, s.labels) for s in subsets], lrs)}
    soft = is_soft(subsets[0].labels)
    if soft:
        curricula["synthetic_hard"] = curriculum_from_subsets([(s.images, hard(s.labels)) for s in subsets], lrs)
    sets = [*curricula] + (["random_real"] + (["random_real_soft"] if soft else []) if cfg.eval.baseline else [])
    total = len(sets) * len(cfg.eval.architectures) * cfg.eval.num_nets
    result = EvalResult(cfg.method, cfg.ipc, lrs, cfg.eval.epochs, cfg.eval.num_nets, cfg.budget,
                        run.status().diverged)
    done = 0
    for which in sets:
        for arch in cfg.eval.architectures:
            def progress(n: int, _total: int, offset: int = done) -> None:
                emit(EventKind.PROGRESS, task="evaluation", done=offset + round(n / _total * cfg.eval.num_nets),
                     total=total)

            if which in curricula:  # the same nets ("synthetic") for the set's own and its hard labels
                accuracy = ctx.evaluate(curricula[which], arch, cfg.eval.num_nets, "test", "synthetic", progress,
                                        control).to_dict()
            else:
                accuracy = ctx.baseline(arch, progress, control, soft=which == "random_real_soft")
            result.add(which, arch, accuracy)
            done += cfg.eval.num_nets
            emit(EventKind.PROGRESS, task="evaluation", done=done, total=total)
            emit(EventKind.EVALUATION, data={"set": which, "arch": arch, **accuracy})
    run.save_eval(result, name)
    return result.to_dict()
