"""G2-G4 for a finished run: held-out experts, the three computations, the run's summary.

Held-out experts are trained with the run's stage-1 recipe (data, net, epochs, lr, batch,
augmentation, seed) under a different seed tag, so they are never the trajectories the set
was distilled against; they are cached with `ExpertCache` like any other experts, and one
set serves G2 (matching error), G3 (features, expert 0) and G4 (hardness).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.core.labels import hard, targets
from seqmatch_engine.data.prepare import PreparedData
from seqmatch_engine.diagnostics.features import (
    Embedding,
    PointSet,
    checkpoint_epochs,
    joint_embedding,
    real_sample,
    subset_points,
)
from seqmatch_engine.diagnostics.gradients import coupling_index
from seqmatch_engine.diagnostics.hardness import (
    expert_correctness,
    hardness,
    masked_accuracy,
    split_easy_hard,
    summarise,
)
from seqmatch_engine.diagnostics.matching_error import g2_plan, late_matching_error, matching_error_curve, owning_subset
from seqmatch_engine.maths.evaluate import curriculum_from_subsets, predict, random_real_curriculum, train_curriculum
from seqmatch_engine.maths.experts import recipe_key
from seqmatch_engine.maths.models import build_eval_net
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.orchestration.executors import Executor
from seqmatch_engine.orchestration.jobs import eval_net_generator
from seqmatch_engine.storage import diagnostics_store as store
from seqmatch_engine.storage.runs import RunError, RunFolder, Subset

COMPUTED = ("g2", "g3", "g4")  # G1 is recorded during distillation, not computed afterwards


@dataclass
class DiagnosticsOptions:
    experts: int = 3           # held-out experts (G2, G3, G4)
    draws: int = 2             # seeded unroll plans per (held-out expert, start epoch) in G2
    real_per_class: int = 20   # real training images per class in G3
    checkpoints: int = 3       # expert epochs shown in G3: 0 .. E evenly spread
    reducer: str = "umap"      # G3 reducer: "umap" or "pca"
    nets: int = 2              # G4 nets per set (first nets of the run's own evaluation)


class RunDiagnostics:
    """Diagnostics of one finished run folder; data and held-out experts are loaded once, on demand."""

    def __init__(self, run: RunFolder, experts_root: Path, options: DiagnosticsOptions | None = None,
                 data: PreparedData | None = None, executor: Executor | None = None):
        self.run = run
        self.options = options or DiagnosticsOptions()
        self.config = run.config()
        self.subsets: list[Subset] = run.subsets()
        if len(self.subsets) < len(self.config.distill.subsets):
            raise RunError(f"run {run.id} has {len(self.subsets)} of {len(self.config.distill.subsets)} subsets; "
                           f"finish it first: python -m seqmatch_engine distill --resume {run.path}")
        self.ctx = RunContext(self.config, experts_root, data, executor)
        self.device, self.cache = self.ctx.device, self.ctx.cache
        self._held_out: torch.Tensor | None = None

    @property
    def data(self) -> PreparedData:
        return self.ctx.data

    @property
    def spec(self):
        return self.ctx.spec

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.ctx.forward(params, x)

    # -- held-out experts ------------------------------------------------------------------------------
    def held_out_recipe(self) -> dict[str, Any]:
        """The run's stage-1 expert recipe, marked held-out (a different cache folder and seed tag)."""
        return {**self.ctx.stage1_recipe(), "held_out": "diagnostics"}

    def held_out_experts(self, progress: ProgressFn | None = None) -> torch.Tensor:
        """Trajectories (options.experts, E+1, P), trained once and cached."""
        if self._held_out is None:
            recipe = self.held_out_recipe()
            jobs = [self.ctx.expert_job(recipe, i, ("held-out-expert", i)) for i in range(self.options.experts)]
            self._held_out = self.ctx.experts(recipe, jobs, progress)
        return self._held_out

    def compute(self, name: str, progress: ProgressFn | None = None, partner: RunFolder | None = None):
        """Compute and cache one of COMPUTED ("g2" takes the SeqMatch partner of a static MTT run)."""
        if name not in COMPUTED:
            raise ValueError(f"unknown diagnostic {name!r}; choose from {', '.join(COMPUTED)}")
        return self.g2(progress, partner) if name == "g2" else getattr(self, name)(progress)

    # -- G2 ----------------------------------------------------------------------------------------------
    def held_out_retrained(self, stage: int, source: list[Subset], progress: ProgressFn | None = None) -> torch.Tensor:
        """Held-out trajectories (options.experts, E_k+1, P) made as SeqMatch's stage-`stage` experts: fresh nets
        trained on the curriculum U_1..U_stage of `source` (a SeqMatch set's subsets) with their lrs, then on
        real data for experts.stage_epochs epochs; cached, with a seed tag no distillation uses."""
        recipe = {**self.ctx.retrained_recipe(stage, source), "held_out": "diagnostics"}
        curriculum = curriculum_from_subsets([(s.images, s.labels) for s in source[:stage]],
                                             [s.lr for s in source[:stage]])
        jobs = [self.ctx.expert_job(recipe, i, ("held-out-expert", stage, i), curriculum)
                for i in range(self.options.experts)]
        return self.ctx.experts(recipe, jobs, progress)

    def g2(self, progress: ProgressFn | None = None, partner: RunFolder | None = None) -> dict[str, Any]:
        """Matching error L(t) by start epoch on every family of held-out trajectories (see matching_error's
        module docstring); saved to g2.json.

        Family 1: stage-1 experts (random init). Families k >= 2 (expert_source "retrained"): experts
        pre-trained on U_1..U_{k-1} of this SeqMatch run, or for static MTT of its SeqMatch `partner` (the
        same seed's run of a comparison or study); without a partner static MTT is scored on family 1 only.
        """
        cfg, dist, data = self.config, self.config.distill, self.data
        source = self.subsets if cfg.method == "seqmatch" else (partner_subsets(partner) if partner else [])
        retrained = dist.expert_source == "retrained" if cfg.method == "seqmatch" else bool(source)
        count = len(source) if retrained else 1
        intervals = [tuple(s.interval) for s in dist.subsets]
        families = []

        for family in range(count):
            experts = self.held_out_experts() if family == 0 else self.held_out_retrained(family, source)

            def scored(t: int, family: int = family) -> int:
                """The subset whose set U_k and lr score start epoch t of this family."""
                if cfg.method == "mtt":
                    return 0
                return owning_subset(t, intervals) if not retrained else family

            def plan_for(e: int, t: int, draw: int, family: int = family):
                k = scored(t)
                images, _, _ = self.scoring_set(k)
                batch = dist.batch_syn or data.num_classes * dist.subsets[k].ipc
                return g2_plan(cfg.seed, family, e, t, draw, len(images), batch, dist.syn_steps, data.image_size)

            def progress_family(done: int, all_: int, family: int = family) -> None:
                if progress:
                    progress(family * all_ + done, count * all_)

            curve = matching_error_curve(self.forward, experts, dist.expert_epochs,
                                         lambda t, scored=scored: self.scoring_set(scored(t)), plan_for,
                                         self.options.draws, progress_family)
            families.append({**curve, "family": family + 1, "subset": [scored(t) for t in curve["start_epochs"]],
                             "source_run": None if family == 0 else (self.run.id if cfg.method == "seqmatch"
                                                                      else partner.id),
                             "late_error": late_matching_error(curve)})
        result = {"method": cfg.method, "run": self.run.id, "ipc": cfg.ipc, "families": families,
                  "lrs": [s.lr for s in self.subsets], "experts": self.options.experts, "draws": self.options.draws,
                  "expert_epochs": dist.expert_epochs, "syn_steps": dist.syn_steps,
                  "held_out_key": recipe_key(self.held_out_recipe()), "version": 2}
        store.write_g2(self.run.path, result)
        return result

    def scoring_set(self, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(images, labels, lr) a student trains on to score subset k: U_k = S_1..S_k with alpha_k for SeqMatch,
        the whole set with alpha_1 for static MTT; labels as the student's loss takes them (class indices, or the
        probabilities of soft labels)."""
        images = torch.cat([s.images for s in self.subsets[:k + 1]]).to(self.device)
        labels = torch.cat([s.labels for s in self.subsets[:k + 1]]).to(self.device)
        return images, targets(labels), self.subsets[k].lr

    # -- G3 ----------------------------------------------------------------------------------------------
    def points(self, source: str | None = None, with_real: bool = True) -> PointSet:
        """The seeded real sample (optional) and the run's synthetic images tagged S1.. with `source`."""
        data = self.data
        parts = [real_sample(data.train_images, data.train_labels, data.num_classes, self.options.real_per_class,
                             self.config.seed)] if with_real else []
        parts.append(subset_points([(s.images, hard(s.labels)) for s in self.subsets], source or self.config.method))
        return PointSet.concat(parts)

    def g3(self, progress: ProgressFn | None = None) -> Embedding:
        """Joint embedding of real + synthetic features under held-out expert 0; cached in the run folder."""
        trajectory = self.held_out_experts()[0]
        epochs = checkpoint_epochs(trajectory.shape[0] - 1, self.options.checkpoints)
        embedding = joint_embedding(trajectory, epochs, self.points(), self.spec, self.options.reducer,
                                    self.config.seed, list(self.data.class_names), self.device, progress)
        store.write_g3(self.run.path, embedding.tensors(), {**embedding.info(), "run": self.run.id})
        return embedding

    # -- G4 ----------------------------------------------------------------------------------------------
    def g4(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Hardness split of the test set and easy/hard accuracy of the run's set and the random-real baseline.

        The nets are the first `options.nets` nets of the run's final evaluation (same seed tags,
        same protocol config.eval), so their overall accuracy equals those in eval.json.
        """
        cfg, data, spec = self.config, self.data, self.spec
        correct = expert_correctness(self.held_out_experts(), data.test_images, data.test_labels, spec)
        h = hardness(correct)
        easy, hard, threshold = split_easy_hard(h)
        curriculum = curriculum_from_subsets([(s.images.to(self.device), s.labels.to(self.device))
                                              for s in self.subsets], [s.lr for s in self.subsets])
        jobs = [("synthetic", curriculum), ("random_real", random_real_curriculum(data, cfg))]
        nets, total, done = self.options.nets, 2 * self.options.nets, 0
        labels = data.test_labels.cpu()
        sets: dict[str, Any] = {}
        for name, stages in jobs:
            scores: dict[str, list[float | None]] = {"all": [], "easy": [], "hard": []}
            for i in range(nets):
                generator = eval_net_generator(cfg.seed, name, "convnet", i)  # the nets of the run's evaluation
                net = build_eval_net("convnet", spec, generator, self.device)
                train_curriculum(net, stages, cfg.eval, generator)
                predictions = predict(net, data.test_images)
                for part, mask in (("all", torch.ones_like(easy)), ("easy", easy), ("hard", hard)):
                    scores[part].append(masked_accuracy(predictions, labels, mask))
                done += 1
                if progress:
                    progress(done, total)
            sets[name] = {part: summarise(values) for part, values in scores.items()}
        result = {"method": cfg.method, "run": self.run.id, "ipc": cfg.ipc, "threshold": threshold,
                  "easy_count": int(easy.sum()), "hard_count": int(hard.sum()), "experts": len(correct),
                  "nets": nets, "eval_epochs": cfg.eval.epochs, "sets": sets,
                  "hardness": [round(float(v), 4) for v in h]}
        store.write_g4(self.run.path, result)
        return result

def partner_subsets(partner: RunFolder) -> list[Subset]:
    """The finished subsets of a SeqMatch run whose retrained-expert families static MTT is scored on."""
    config, subsets = partner.config(), partner.subsets()
    if config.method != "seqmatch" or config.distill.expert_source != "retrained":
        raise RunError(f"run {partner.id} is not a SeqMatch run with retrained experts: it cannot serve as the "
                       f"partner whose expert families static MTT is scored on")
    if len(subsets) < len(config.distill.subsets):
        raise RunError(f"partner run {partner.id} is not finished ({len(subsets)} of {len(config.distill.subsets)} "
                       f"subsets)")
    return subsets


def missing(run_dir: Path, reducer: str | None = None) -> list[str]:
    """Which of G2-G4 a run folder lacks (G3 also when it was cached with another reducer)."""
    g2 = store.read_g2(run_dir)
    lacking = ["g2"] if g2 is None or g2.get("version") != 2 else []  # version 1 scored every set on stage-1 experts
    lacking += ["g4"] if store.read_g4(run_dir) is None else []
    g3 = store.read_g3(run_dir)
    if g3 is None or (reducer and g3[1].get("reducer") != reducer):
        lacking.append("g3")
    return sorted(lacking)


@torch.no_grad()
def load_embedding(run_dir: Path) -> Embedding | None:
    """The cached G3 embedding of a run folder, or None."""
    found = store.read_g3(run_dir)
    return Embedding.from_parts(*found) if found else None


def overlay_embedding(runs: list[RunDiagnostics], labels: list[str], reducer: str = "pca",
                      progress: ProgressFn | None = None) -> Embedding:
    """One joint embedding of several runs' sets (sources = labels) and the first run's real sample.

    Uses the first run's held-out expert 0 and data; the runs should share data and net settings.
    """
    first = runs[0]
    points = PointSet.concat([first.points(labels[0])] +
                             [r.points(label, with_real=False) for r, label in zip(runs[1:], labels[1:], strict=True)])
    trajectory = first.held_out_experts()[0]
    epochs = checkpoint_epochs(trajectory.shape[0] - 1, first.options.checkpoints)
    return joint_embedding(trajectory, epochs, points, first.spec, reducer, first.config.seed,
                           list(first.data.class_names), first.device, progress)


def summary(run_dir: Path) -> dict[str, Any]:
    """Coupling index (G1), late-epoch matching error (G2, one value per family of held-out trajectories) and
    easy/hard accuracies (G4); None where absent."""
    g2, g4 = store.read_g2(run_dir), store.read_g4(run_dir)
    families = g2.get("families") if g2 else None
    result: dict[str, Any] = {"coupling_index": coupling_index(store.read_g1(run_dir)),
                              "late_matching_error": [f["late_error"] for f in families] if families else None}
    for name in ("synthetic", "random_real"):
        for part in ("easy", "hard"):
            result[f"{part}_accuracy_{name}"] = g4["sets"][name][part]["mean"] if g4 else None
    return result


def format_late_errors(values: list[float] | None) -> str:
    """Late-epoch matching errors per family of held-out trajectories: 'family 1 0.4120 · family 2 0.5510'."""
    if not values:
        return "n/a"
    return " · ".join(f"family {k + 1} {v:.4f}" for k, v in enumerate(values))


def format_summary(values: dict[str, Any]) -> str:
    """A few readable lines of `summary`'s result."""
    def number(v: float | None, percent: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.2f} %" if percent else f"{v:.4f}"

    return "\n".join([
        f"coupling index (G1)          {number(values['coupling_index'])}",
        f"late-epoch matching error    {format_late_errors(values['late_matching_error'])}",
        f"hard-image accuracy (G4)     {number(values['hard_accuracy_synthetic'], True)} synthetic, "
        f"{number(values['hard_accuracy_random_real'], True)} random real",
        f"easy-image accuracy (G4)     {number(values['easy_accuracy_synthetic'], True)} synthetic, "
        f"{number(values['easy_accuracy_random_real'], True)} random real"])
