"""How long a run has left: its phases as work units, priced by rates measured in the run itself.

    plan = run_plan(config, data_sizes)        # [PhasePlan("experts 1", PhaseKind.EXPERTS, units), ...]
    eta = remaining_seconds(plan, current, fraction_done, measured)

A phase's units: experts, image-epochs of expert training; distilling, image-steps of the unrolled student
(iterations x batch x N) plus image-epochs of its validation nets (U_k per candidate, U_1..U_{k-1} once);
evaluating, image-epochs of evaluation nets. Each kind's seconds per unit is taken from the phases of that
kind this run has finished or is in (`measured`); a kind not measured yet is priced from a measured kind by
the ratios of DEFAULT_RATES (bench figures on a 2-core CPU), or by DEFAULT_RATES alone before anything is
measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from seqmatch_engine.core.config import RunConfig, selection_iterations
from seqmatch_engine.core.phases import PhaseKind

# Seconds per unit on this project's 2-core CPU (bench: experts 3700 images/s for two at once, a `small`
# outer iteration 0.78 s for 100 images x 10 steps, evaluation 36 epochs/s of 100 images): only the ratios
# matter once one kind is measured.
DEFAULT_RATES = {PhaseKind.EXPERTS: 2.7e-4, PhaseKind.DISTILLING: 7.8e-4, PhaseKind.EVALUATING: 2.8e-4}


@dataclass(frozen=True)
class PhasePlan:
    name: str     # as the driver names the phase ("experts 2", "distilling S1", "evaluating")
    kind: PhaseKind  # experts, distilling or evaluating
    units: float
    stage: int | None = None  # the subset it serves (0-based); None for evaluating


def run_plan(config: RunConfig, train_images: int, classes: int, start_stage: int = 0) -> list[PhasePlan]:
    """The phases of a run from stage `start_stage` on (cached experts and evaluations are counted as work: an
    upper bound)."""
    e, d, v = config.experts, config.distill, config.eval
    plan, union, curriculum = [], 0, 0  # images in U_k; in U_1 + U_2 + ... + U_k (what evaluation trains on)
    for k, sub in enumerate(d.subsets):
        union += sub.ipc * classes
        curriculum += union
        if k < start_stage:
            continue
        if k == 0 or (d.expert_source == "retrained" and k >= 1):
            epochs = e.epochs if k == 0 else e.stage_epochs
            pretrain = 0 if k == 0 else v.epochs * (union - sub.ipc * classes)
            plan.append(PhasePlan(f"experts {k + 1}", PhaseKind.EXPERTS,
                                  e.num_experts * (epochs * train_images + pretrain), k))
        batch = d.batch_syn or classes * sub.ipc
        points = selection_iterations(sub.iterations, d.select_every, d.select_points)
        selections = len(points) + 1 if points else 0  # the initial images are scored too
        earlier = curriculum - union if selections else 0  # U_1..U_{k-1}: trained once per stage (Selection)
        eval_per_distill = DEFAULT_RATES[PhaseKind.EVALUATING] / DEFAULT_RATES[PhaseKind.DISTILLING]
        select_units = v.select_nets * v.epochs * (selections * union + earlier) * eval_per_distill
        plan.append(PhasePlan(f"distilling S{k + 1}", PhaseKind.DISTILLING,
                              sub.iterations * batch * d.syn_steps + select_units, k))
    evaluated = curriculum + config.ipc * classes * v.baseline  # every curriculum stage, then the baseline
    plan.append(PhasePlan("evaluating", PhaseKind.EVALUATING,
                          v.num_nets * len(v.architectures) * v.epochs * evaluated))
    return plan


def controls_plan(config: RunConfig, classes: int) -> PhasePlan:
    """The evaluation-only controls a study measures after a sequential run (evaluate.control_curricula), in
    evaluation units: S1 alone, all subsets in one stage, and the curriculum with random real images last (ConvNet
    nets only; priced at the evaluating rate of whole runs, which also train a soft-label set's hard-label and
    baseline nets and any other architectures, so it is an upper bound there)."""
    ipcs = [sub.ipc for sub in config.distill.subsets]
    curriculum = sum(sum(ipcs[:k + 1]) for k in range(len(ipcs)))
    return PhasePlan("controls", PhaseKind.EVALUATING,
                     config.eval.num_nets * config.eval.epochs * classes * (ipcs[0] + sum(ipcs) + curriculum))


def rate(kind: PhaseKind, measured: dict[PhaseKind, float]) -> float:
    """Seconds per unit of `kind`: measured, else the mean of the measured kinds' rates scaled by DEFAULT_RATES'
    ratios (how much slower this machine is than the bench's), else DEFAULT_RATES."""
    if kind in measured:
        return measured[kind]
    if measured:
        return sum(seconds * DEFAULT_RATES[kind] / DEFAULT_RATES[other] for other, seconds in measured.items()) \
            / len(measured)
    return DEFAULT_RATES[kind]


def remaining_seconds(plan: list[PhasePlan], current: str | None, fraction_done: float,
                      measured: dict[PhaseKind, float]) -> float | None:
    """Seconds left: the rest of phase `current` (of which `fraction_done` is done) and every later phase.
    None when `current` is not in the plan (before the plan is known, or after the run)."""
    names = [p.name for p in plan]
    if current not in names:
        return None
    index = names.index(current)
    left = plan[index].units * (1 - min(max(fraction_done, 0.0), 1.0)) * rate(plan[index].kind, measured)
    left += sum(p.units * rate(p.kind, measured) for p in plan[index + 1:])
    return left if math.isfinite(left) else None
