"""G2: matching error L(t) by start epoch on held-out trajectories (diagnostics/matching_error.py has the
definition), stored as diagnostics/g2.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.diagnostics.matching_error import g2_plan, late_matching_error, matching_error_curve, owning_subset
from seqmatch_engine.maths.evaluate import curriculum_from_subsets
from seqmatch_engine.maths.experts import recipe_key
from seqmatch_engine.orchestration.run_diagnostics.base import (
    Diagnostic,
    RunDiagnostics,
    partner_subsets,
    readable,
)
from seqmatch_engine.storage.diagnostic_records import G2Family, G2Result
from seqmatch_engine.storage.diagnostics_store import read_g2, write_g2
from seqmatch_engine.storage.runs import RunFolder, Subset

VERSION = 2  # version 1 scored every set on stage-1 experts only


def held_out_retrained(diagnostics: RunDiagnostics, stage: int, source: list[Subset],
                       progress: ProgressFn | None = None) -> torch.Tensor:
    """Held-out trajectories (options.experts, E_k+1, P) made as SeqMatch's stage-`stage` experts: fresh nets
    trained on the curriculum U_1..U_stage of `source` (a SeqMatch set's subsets) with their lrs, then on real
    data for experts.stage_epochs epochs; cached, with a seed tag no distillation uses."""
    ctx = diagnostics.ctx
    recipe = {**ctx.retrained_recipe(stage, source), "held_out": "diagnostics"}
    curriculum = curriculum_from_subsets([(s.images, s.labels) for s in source[:stage]], [s.lr for s in source[:stage]])
    jobs = [ctx.expert_job(recipe, i, ("held-out-expert", stage, i), curriculum)
            for i in range(diagnostics.options.experts)]
    return ctx.experts(recipe, jobs, progress)


def compute(diagnostics: RunDiagnostics, progress: ProgressFn | None = None,
            partner: RunFolder | None = None) -> G2Result:
    """Matching error L(t) by start epoch on every family of held-out trajectories; saved to g2.json.

    Family 1: stage-1 experts (random init). Families k >= 2 (expert_source "retrained"): experts pre-trained
    on U_1..U_{k-1} of this sequential run, or for a static run of its sequential `partner` (the same seed's
    run of a comparison or study); without a partner a static run is scored on family 1 only.
    """
    d = diagnostics
    cfg, dist, data = d.config, d.config.distill, d.data
    source = d.subsets if d.sequential else (partner_subsets(partner) if partner else [])
    retrained = dist.expert_source == "retrained" if d.sequential else bool(source)
    count = len(source) if retrained else 1
    intervals = [tuple(s.interval) for s in dist.subsets]
    families = []

    for family in range(count):
        experts = d.held_out_experts() if family == 0 else held_out_retrained(d, family, source)

        def scored(t: int, family: int = family) -> int:
            """The subset whose set U_k and lr score start epoch t of this family."""
            if not d.sequential:
                return 0
            return owning_subset(t, intervals) if not retrained else family

        def plan_for(e: int, t: int, draw: int, family: int = family):
            k = scored(t)
            images, _, _ = d.scoring_set(k)
            batch = dist.batch_syn or data.num_classes * dist.subsets[k].ipc
            return g2_plan(cfg.seed, family, e, t, draw, len(images), batch, dist.syn_steps, data.image_size)

        def progress_family(done: int, all_: int, family: int = family) -> None:
            if progress:
                progress(family * all_ + done, count * all_)

        curve = matching_error_curve(d.forward, experts, dist.expert_epochs,
                                     lambda t, scored=scored: d.scoring_set(scored(t)), plan_for,
                                     d.options.draws, progress_family)
        families.append(G2Family(curve["start_epochs"], curve["mean"], curve["std"], curve["per_expert"], family + 1,
                                 [scored(t) for t in curve["start_epochs"]],
                                 None if family == 0 else (d.run.id if d.sequential else partner.id),
                                 late_matching_error(curve)))
    result = G2Result(cfg.method, d.run.id, cfg.ipc, families, [s.lr for s in d.subsets], d.options.experts,
                      d.options.draws, dist.expert_epochs, dist.syn_steps, recipe_key(d.held_out_recipe()), VERSION)
    write_g2(d.run.path, result)
    return result


def lacks(run_dir: Path, reducer: str | None, partner: bool) -> bool:
    """Absent, unreadable (an older version's file), of an older version, or computed without a partner's
    families where a partner is now given."""
    found = readable(read_g2, run_dir)
    return found is None or found.version != VERSION or (partner and len(found.families) < 2)


def summary(run_dir: Path) -> dict[str, Any]:
    found = readable(read_g2, run_dir)
    return {"late_matching_error": [f.late_error for f in found.families] if found and found.families else None}


def format_late_errors(values: list[float] | None) -> str:
    """Late-epoch matching errors per family of held-out trajectories: 'family 1 0.4120 · family 2 0.5510'."""
    if not values:
        return "n/a"
    return " · ".join(f"family {k + 1} {v:.4f}" for k, v in enumerate(values))


def summary_lines(values: dict[str, Any]) -> list[str]:
    return [f"late-epoch matching error    {format_late_errors(values['late_matching_error'])}"]


DIAGNOSTIC = Diagnostic("g2", "G2 matching error", compute, lacks, summary, summary_lines)
