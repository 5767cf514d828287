"""G2: matching error of a finished set by start epoch of held-out trajectories, like with like.

For each start epoch t of every held-out trajectory theta* (n, E+1, P), the student starts at
theta*_t, trains for N = syn_steps planned steps on a set X with lr alpha and is scored by the
ordinary normalised MTT loss against theta*_{t+M}:

    L(t) = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2      (matching.matching_loss)

averaged over held-out trajectories and `draws` seeded unroll plans per (trajectory, t).

Held-out trajectories come in families, made the way each stage's experts were made (never the
ones a set was distilled against):
- family 1: stage-1 experts (random init, real data);
- family k >= 2 (expert_source "retrained"): nets first trained on the SeqMatch set's U_1..U_{k-1}
  with its learned lrs, then on real data.
Each set is scored only with the data it was learned with: on family k, SeqMatch's student trains
on U_k = S_1..S_k with alpha_k and minibatches of C * ipc_k, exactly as while S_k was distilled;
static MTT trains on its whole set with alpha_1 on every family (for k >= 2, the families of the
SeqMatch run it is compared with). So neither method is scored on trajectories only the other was
asked to match, except that static MTT is also asked about later knowledge, which is the question.
With expert_source "window", family 1 alone is used and epoch t is scored with the subset k whose
interval [a_k, b_k) contains t (the latest; else the nearest, the later on ties).
"""
from __future__ import annotations

import math
import statistics
from typing import Callable

import torch

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.maths.augment import DSA_OPERATIONS
from seqmatch_engine.maths.matching import ForwardFn, UnrollPlan, draw_unroll_plan, matching_loss

LATE_FRACTION = 0.25  # "late-epoch matching error": mean L(t) over the last quarter of start epochs


def owning_subset(t: int, intervals: list[tuple[int, int]]) -> int:
    """Index k of the subset whose interval [a_k, b_k) contains t (latest wins; else the nearest, later on ties)."""
    containing = [k for k, (a, b) in enumerate(intervals) if a <= t < b]
    if containing:
        return containing[-1]
    distances = [max(a - t, t - (b - 1)) for a, b in intervals]
    nearest = min(distances)
    return max(k for k, d in enumerate(distances) if d == nearest)


def g2_plan(seed: int, family: int, expert: int, t: int, draw: int, num_images: int, batch_size: int, steps: int,
            image_size: tuple[int, int], augment: bool = True) -> UnrollPlan:
    """The seeded unroll plan for (family, held-out expert, start epoch, draw): the same for every run of one seed."""
    generator = make_generator(seed, "g2", family, expert, t, draw)
    return draw_unroll_plan(generator, num_images, batch_size, steps, image_size, DSA_OPERATIONS if augment else None)


def loss_at(forward: ForwardFn, trajectory: torch.Tensor, t: int, expert_epochs: int, images: torch.Tensor,
            labels: torch.Tensor, lr: float, plan: UnrollPlan) -> float:
    """L(t) of one trajectory (E+1, P) for images (n, C, H, W), labels (n,) and one plan."""
    device = images.device
    start, target = trajectory[t].to(device), trajectory[t + expert_epochs].to(device)
    lr_tensor = torch.tensor(float(lr), device=device)
    return float(matching_loss(forward, start, target, images.detach(), labels, lr_tensor, plan).detach())


SetFn = Callable[[int], tuple[torch.Tensor, torch.Tensor, float]]  # start epoch -> (images, labels, lr)


def matching_error_curve(forward: ForwardFn, experts: torch.Tensor, expert_epochs: int, set_for: SetFn,
                         plan_for: Callable[[int, int, int], UnrollPlan], draws: int,
                         progress: ProgressFn | None = None) -> dict:
    """L(t) for every start epoch of held-out experts (n, E+1, P).

    `set_for(t)` gives the student's images (n, C, H, W), labels (n,) and lr, `plan_for(expert, t, draw)`
    the unroll plan.
    Returns start_epochs (T,), mean (T,), std (T,) over all (expert, draw) pairs, and
    per_expert (n, T) means over draws.
    """
    count, horizon = experts.shape[0], experts.shape[1] - 1
    starts = list(range(0, horizon - expert_epochs + 1))
    per_expert = [[0.0] * len(starts) for _ in range(count)]
    values: list[list[float]] = [[] for _ in starts]
    total, done = count * len(starts) * draws, 0
    for e in range(count):
        for j, t in enumerate(starts):
            images, labels, lr = set_for(t)
            losses = [loss_at(forward, experts[e], t, expert_epochs, images, labels, lr, plan_for(e, t, d))
                      for d in range(draws)]
            per_expert[e][j] = statistics.fmean(losses)
            values[j] += losses
            done += draws
            if progress:
                progress(done, total)
    return {"start_epochs": starts, "mean": [statistics.fmean(v) for v in values],
            "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values], "per_expert": per_expert}


def late_matching_error(result: dict, fraction: float = LATE_FRACTION) -> float:
    """Mean of L(t) over the last ceil(fraction * T) start epochs of a G2 result."""
    means = result["mean"]
    tail = means[-max(1, math.ceil(fraction * len(means))):]
    return statistics.fmean(tail)
