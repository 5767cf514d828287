"""The run context: one run's config, prepared data, device, net, executor and recipes, built once.

The driver, the CLI, diagnostics, studies and the benchmark read a run through it, so that a recipe
(what determines a set of cached experts) is written in one place, and evaluation nets are trained (or
read back, eval_cache.py) in one place.

    ctx = RunContext(config, experts_root)
    experts = ctx.stage1_experts(progress, control)        # (n, E+1, P), cached under experts_root
    accuracy = ctx.evaluate(stages, "convnet", 5, "test", "synthetic", progress, control)
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import torch

from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.core.control import ProgressFn, RunControl
from seqmatch_engine.core.seeding import resolve_device
from seqmatch_engine.data.prepare import PreparedData, prepare_data
from seqmatch_engine.maths.evaluate import Accuracy, CurriculumStage, curriculum_from_subsets, random_real_curriculum
from seqmatch_engine.maths.experts import expert_code_version, tensor_digest
from seqmatch_engine.maths.matching import PIXEL_GROWTH
from seqmatch_engine.maths.models import ConvNetSpec, convnet_forward, default_depth
from seqmatch_engine.methods.datm import expert_logits
from seqmatch_engine.orchestration.eval_cache import EvaluationCache
from seqmatch_engine.orchestration.executors import Executor, LocalExecutor
from seqmatch_engine.orchestration.jobs import (
    DataRef,
    EvalJob,
    ExpertJob,
    NetState,
    epochs_of,
    remember_data,
    train_and_test,
    train_expert,
    train_partway,
)
from seqmatch_engine.storage.expert_cache import ExpertCache
from seqmatch_engine.storage.runs import Subset


class RunContext:
    def __init__(self, config: RunConfig, experts_root: Path, data: PreparedData | None = None,
                 executor: Executor | None = None):
        self.config = config
        self.device = resolve_device(config.device)
        self.cache = ExpertCache(experts_root)
        self.evaluations = EvaluationCache(experts_root)
        self.evaluations_read = 0  # evaluation nets read back from the cache instead of trained, so far
        self.executor = executor or LocalExecutor.for_device(self.device)
        self._data = data
        # called after each expert trajectory or evaluation result is filed, which a resumed run reads instead of
        # redoing (the driver records its phase time there)
        self.on_filed: Callable[[], None] = lambda: None

    # -- data and net ------------------------------------------------------------------------------------
    @property
    def data_ref(self) -> DataRef:
        return DataRef.of(self.config.data, self.config.seed)

    @property
    def data(self) -> PreparedData:
        """The prepared splits on the device (loaded on first use, and shared with local jobs)."""
        if self._data is None:
            self._data = prepare_data(self.config.data, self.config.seed, self.device)
        remember_data(self.data_ref, self.device, self._data)
        return self._data

    @property
    def spec(self) -> ConvNetSpec:
        d = self.data
        return ConvNetSpec(d.channels, d.image_size, d.num_classes, self.config.model.width,
                           self.config.model.depth or default_depth(d.image_size))

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return convnet_forward(params, x, self.spec)

    @property
    def pixel_limit(self) -> float:
        """Largest sane per-image RMS of a learned image: PIXEL_GROWTH times the real training images' RMS."""
        return PIXEL_GROWTH * float(self.data.train_images.pow(2).mean().sqrt())

    # -- experts -------------------------------------------------------------------------------------------
    def expert_recipe(self, stage: int, epochs: int, warm_start: str | None) -> dict[str, Any]:
        """Everything that determines a set of expert trajectories (its cache key), the code that trains them
        included."""
        cfg, spec = self.config, self.spec
        d, e = cfg.data, cfg.experts
        return {"dataset": d.dataset, "zca": d.zca, "train_per_class": d.train_per_class,
                "val_per_class": d.val_per_class, "spec": [spec.channels, list(spec.image_size), spec.num_classes,
                                                           spec.width, spec.depth],
                "epochs": epochs, "lr": e.lr, "batch_size": e.batch_size, "augment": e.augment,
                "seed": cfg.seed, "warm_start": warm_start, "stage": stage, "code": expert_code_version()}

    def stage1_recipe(self) -> dict[str, Any]:
        return self.expert_recipe(0, self.config.experts.epochs, None)

    def retrained_recipe(self, stage: int, subsets: list[Subset]) -> dict[str, Any]:
        """Stage `stage`'s experts: pre-trained on U_1..U_stage of `subsets` with their lrs, then real data.
        The key holds a digest of those subsets' pixels, labels and lrs."""
        prior = subsets[:stage]
        digest = tensor_digest(*[t for s in prior for t in (s.images, s.labels, torch.tensor(s.lr))])
        return self.expert_recipe(stage, self.config.experts.stage_epochs,
                                  f"curriculum-{digest}-eval{self.config.eval.epochs}")

    def expert_job(self, recipe: dict[str, Any], index: int, tags: tuple,
                   warm_start: list[CurriculumStage] | None = None) -> ExpertJob:
        e = self.config.experts
        stages = tuple(CurriculumStage(s.images.cpu(), s.labels.cpu(), s.lr) for s in warm_start or [])
        return ExpertJob(self.data_ref, self.spec, recipe["epochs"], e.lr, e.batch_size, e.augment, self.config.seed,
                         tags, str(self.device), stages, self.config.eval if stages else None)

    def experts(self, recipe: dict[str, Any], jobs: list[ExpertJob], progress: ProgressFn | None = None,
                control: RunControl | None = None) -> torch.Tensor:
        """Trajectories (n, E+1, P) of `recipe`: cached ones read, missing ones trained on the executor; each
        is written (atomically, by this process only) as soon as it arrives."""
        count = len(jobs)
        shape = (recipe["epochs"] + 1, self.spec.num_params)
        missing = self.cache.missing(recipe, count, shape)
        done = {i: 0 for i in missing}
        total = count * recipe["epochs"]

        def epoch_done(position: int, epoch: int) -> None:
            done[missing[position]] = max(done[missing[position]], epoch)
            if progress:
                progress(total - recipe["epochs"] * len(missing) + sum(done.values()), total)

        if progress:
            progress(total - recipe["epochs"] * len(missing), total)
        for position, trajectory in self.executor.map(train_expert, [jobs[i] for i in missing], epoch_done, control):
            self.cache.save(recipe, missing[position], trajectory)
            self.on_filed()
        return self.cache.load(recipe, count, shape)

    def stage1_jobs(self, recipe: dict[str, Any], count: int, tag: str = "expert") -> list[ExpertJob]:
        return [self.expert_job(recipe, i, (tag, recipe["warm_start"], i)) for i in range(count)]

    def stage1_experts(self, progress: ProgressFn | None = None, control: RunControl | None = None) -> torch.Tensor:
        """The stage-1 trajectories (n, E+1, P): random init, real data."""
        recipe = self.stage1_recipe()
        return self.experts(recipe, self.stage1_jobs(recipe, self.config.experts.num_experts), progress, control)

    def retrained_experts(self, stage: int, subsets: list[Subset], progress: ProgressFn | None = None,
                          control: RunControl | None = None) -> torch.Tensor:
        """Stage `stage`'s trajectories (n, E_k+1, P): nets first trained on U_1..U_stage, then on real data."""
        recipe = self.retrained_recipe(stage, subsets)
        curriculum = curriculum_from_subsets([(s.images, s.labels) for s in subsets[:stage]],
                                             [s.lr for s in subsets[:stage]])
        jobs = [self.expert_job(recipe, i, ("expert", recipe["warm_start"], i), curriculum)
                for i in range(self.config.experts.num_experts)]
        return self.experts(recipe, jobs, progress, control)

    def cached_stage1_experts(self) -> torch.Tensor:
        """The stage-1 trajectories read from the cache; StorageError when any is missing."""
        recipe = self.stage1_recipe()
        return self.cache.load(recipe, self.config.experts.num_experts,
                               (recipe["epochs"] + 1, self.spec.num_params))

    # -- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, stages: list[CurriculumStage], arch: str, nets: int, split: str, tag: str,
                 progress: ProgressFn | None = None, control: RunControl | None = None,
                 starts: list[NetState] | None = None) -> Accuracy:
        """Train `nets` fresh `arch` nets through `stages` (on the executor) and measure them on `split`;
        with `starts` (from `train_partway` with the same tag), net i goes on from starts[i]."""
        return Accuracy(self._eval_jobs(train_and_test, stages, arch, nets, split, tag, progress, control, starts,
                                        cached=True))

    def train_partway(self, stages: list[CurriculumStage], arch: str, nets: int, tag: str,
                      progress: ProgressFn | None = None, control: RunControl | None = None) -> list[NetState]:
        """Nets 0..nets-1 of `tag` trained through `stages` only: shared starts for curricula that begin
        with these stages (selection scores every candidate of stage k after the same U_1..U_{k-1})."""
        return self._eval_jobs(train_partway, stages, arch, nets, "", tag, progress, control, None, cached=False)

    def _eval_jobs(self, fn: Callable, stages: list[CurriculumStage], arch: str, nets: int, split: str, tag: str,
                   progress: ProgressFn | None, control: RunControl | None, starts: list[NetState] | None,
                   cached: bool) -> list:
        """fn(job) for nets 0..nets-1 on the executor, in order; with `cached`, results met before are read from
        the EvaluationCache and new ones filed there."""
        cpu = tuple(CurriculumStage(s.images.detach().cpu(), s.labels.cpu(), s.lr) for s in stages)
        jobs = [EvalJob(self.data_ref, self.spec, self.config.eval, arch, cpu, self.config.seed, tag, i, split,
                        str(self.device), starts[i] if starts else None) for i in range(nets)]
        measured_on = self.evaluation_data_digest if cached else ""
        results = {i: value for i, job in enumerate(jobs)
                   if cached and (value := self.evaluations.get(job, measured_on)) is not None}
        todo = [i for i in range(nets) if i not in results]
        self.evaluations_read += len(results)
        epochs: dict[int, int] = {}
        total = sum(epochs_of(jobs[i]) for i in todo)

        def epoch_done(position: int, epoch: int) -> None:
            epochs[position] = epoch
            if progress:
                progress(sum(epochs.values()), total)

        for position, value in self.executor.map(fn, [jobs[i] for i in todo], epoch_done, control):
            results[todo[position]] = value
            if cached:
                self.evaluations.put(jobs[todo[position]], measured_on, value)
                self.on_filed()
        return [results[i] for i in range(nets)]

    @functools.cached_property
    def evaluation_data_digest(self) -> str:
        """Digest of the validation and test tensors evaluation nets are measured on (part of their cache key)."""
        d = self.data
        return tensor_digest(d.val_images, d.val_labels, d.test_images, d.test_labels)

    def baseline(self, arch: str, progress: ProgressFn | None = None, control: RunControl | None = None,
                 soft: bool = False) -> dict[str, Any]:
        """Test accuracy of a random real set of the run's IPC. It depends on the data, the model, the
        evaluation settings, the IPC and the seed only, so the MTT and SeqMatch runs of a comparison share it
        (their baseline jobs are the same jobs: the second run reads them from the evaluation cache). With
        `soft`, the same images and nets with soft labels from the stage-1 experts (a soft-label method's
        fair baseline)."""
        stages = random_real_curriculum(self.data, self.config)
        if soft:
            stages = [CurriculumStage(s.images, self.soft_labels(s.images, s.labels), s.lr) for s in stages]
        return self.evaluate(stages, arch, self.config.eval.num_nets, "test", "random_real", progress,
                             control).to_dict()

    def soft_labels(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Soft labels (n, C) of real images of known classes from the stage-1 experts' final epochs (the mean
        logits of those that classify each correctly), as DATM initialises its own."""
        spec = self.spec
        return expert_logits(images, classes, self.cached_stage1_experts()[:, -1],
                             lambda p, x: convnet_forward(p, x, spec))[0]
