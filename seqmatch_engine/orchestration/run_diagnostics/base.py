"""What every diagnostic of a finished run shares: its declaration, the options, and the run's context
(data, net, held-out experts, the sets a student scores each subset on).

Held-out experts are trained with the run's stage-1 recipe (data, net, epochs, lr, batch, augmentation,
seed) under a different seed tag, so they are never the trajectories the set was distilled against; they
are cached with `ExpertCache` like any other experts, and one set serves every diagnostic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.core.labels import hard, targets
from seqmatch_engine.data.prepare import PreparedData
from seqmatch_engine.diagnostics.features import PointSet, real_sample, subset_points
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.orchestration.executors import Executor
from seqmatch_engine.storage.files import StorageError
from seqmatch_engine.storage.runs import RunError, RunFolder, Subset


@dataclass
class DiagnosticsOptions:
    experts: int = 3           # held-out experts (G2, G3, G4)
    draws: int = 2             # seeded unroll plans per (held-out expert, start epoch) in G2
    real_per_class: int = 20   # real training images per class in G3
    checkpoints: int = 3       # expert epochs shown in G3: 0 .. E evenly spread
    reducer: str = "umap"      # G3 reducer: "umap" or "pca"
    nets: int = 2              # G4 nets per set (first nets of the run's own evaluation)


@dataclass(frozen=True)
class Diagnostic:
    """One diagnostic, declared once (see run_diagnostics/__init__.py for the list).

    compute(diagnostics, progress, partner) computes and stores it for a finished run (None: recorded while
    distilling, as G1); lacks(run_dir, reducer, partner) says whether a run folder needs it (re)computed (G3
    with another reducer than `reducer`, None: any; G2 without the families a partner adds, when `partner`);
    summary(run_dir) gives its numbers for the run's summary and summary_lines(values) their readable lines.
    """
    name: str
    title: str
    compute: Callable[["RunDiagnostics", ProgressFn | None, RunFolder | None], Any] | None
    lacks: Callable[[Path, str | None, bool], bool]
    summary: Callable[[Path], dict[str, Any]]
    summary_lines: Callable[[dict[str, Any]], list[str]]


class RunDiagnostics:
    """The context of one finished run folder's diagnostics; data and held-out experts are loaded once, on demand."""

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

    @property
    def sequential(self) -> bool:
        """SeqMatch's schedule (K subsets in turn), whatever the objective."""
        return self.config.schedule == "sequential"

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

    # -- the sets the diagnostics look at ----------------------------------------------------------------
    def scoring_set(self, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(images, labels, lr) a student trains on to score subset k: U_k = S_1..S_k with alpha_k for SeqMatch,
        the whole set with alpha_1 for static MTT; labels as the student's loss takes them (class indices, or the
        probabilities of soft labels)."""
        images = torch.cat([s.images for s in self.subsets[:k + 1]]).to(self.device)
        labels = torch.cat([s.labels for s in self.subsets[:k + 1]]).to(self.device)
        return images, targets(labels), self.subsets[k].lr

    def points(self, source: str | None = None, with_real: bool = True) -> PointSet:
        """The seeded real sample (optional) and the run's synthetic images tagged S1.. with `source`."""
        data = self.data
        parts = [real_sample(data.train_images, data.train_labels, data.num_classes, self.options.real_per_class,
                             self.config.seed)] if with_real else []
        parts.append(subset_points([(s.images, hard(s.labels)) for s in self.subsets], source or self.config.method))
        return PointSet.concat(parts)


def partner_subsets(partner: RunFolder) -> list[Subset]:
    """The finished subsets of a sequential run whose retrained-expert families a static run is scored on."""
    config, subsets = partner.config(), partner.subsets()
    if config.schedule != "sequential" or config.distill.expert_source != "retrained":
        raise RunError(f"run {partner.id} is not a SeqMatch run with retrained experts: it cannot serve as the "
                       f"partner whose expert families static MTT is scored on")
    if len(subsets) < len(config.distill.subsets):
        raise RunError(f"partner run {partner.id} is not finished ({len(subsets)} of {len(config.distill.subsets)} "
                       f"subsets)")
    return subsets


def readable(read: Callable[[Path], Any], run_dir: Path) -> Any:
    """read(run_dir), or None when the file is damaged or of an older version: for deciding what is missing
    (then computed again, which rewrites it) and for summaries (n/a); the views show the read's own message."""
    try:
        return read(run_dir)
    except StorageError:
        return None


def number(value: float | None, percent: bool = False) -> str:
    """A summary number as text: 'n/a' when absent, a percentage for accuracies."""
    if value is None:
        return "n/a"
    return f"{100 * value:.2f} %" if percent else f"{value:.4f}"
