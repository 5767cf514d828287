"""Distillation methods behind one declared protocol; the stage loop calls `method.step` and nothing else.

MTT (trajectory matching) is the first method. Another objective (soft labels as in DATM/TESLA, another
matching loss) is another class with the same two methods, not an edit of the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .augment import DSA_OPERATIONS
from .matching import ConvNetStudent, MatchingState, draw_unroll_plan, outer_step


@dataclass(frozen=True)
class StepRecord:
    """What one outer iteration did (the hooks' input)."""

    loss: float
    lr: float
    expert: int
    start_epoch: int
    image_grads: torch.Tensor | None  # (n, C, H, W) pixel gradients of [frozen; learned] when recorded


@dataclass(frozen=True)
class StageSetting:
    """What a method needs to know about the stage it distils."""

    interval: tuple[int, int]   # start epochs t are drawn from [a, b - expert_epochs)
    expert_epochs: int          # M
    syn_steps: int              # N
    batch_syn: int              # student minibatch
    max_lr: float
    image_size: tuple[int, int]


class Method(Protocol):
    name: str

    def step(self, state: MatchingState, experts: torch.Tensor, frozen: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator, record_gradients: bool) -> StepRecord:
        """One outer iteration on the learned images of `state` ([frozen; learned] with `labels`), against
        trajectories `experts` (n, E+1, P); draws from `generator` only. Raises DivergenceError."""
        ...


class MTT:
    """Matching Training Trajectories: a random expert and start epoch t, N unrolled student steps on the
    synthetic set from theta*_t, loss ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2."""

    name = "mtt"

    def __init__(self, student: ConvNetStudent, setting: StageSetting):
        self.student, self.setting = student, setting

    def step(self, state: MatchingState, experts: torch.Tensor, frozen: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator, record_gradients: bool) -> StepRecord:
        s = self.setting
        expert = int(torch.randint(len(experts), (1,), generator=generator))
        t = int(torch.randint(s.interval[0], s.interval[1] - s.expert_epochs, (1,), generator=generator))
        device = state.images.device
        start, target = experts[expert, t].to(device), experts[expert, t + s.expert_epochs].to(device)
        plan = draw_unroll_plan(generator, len(labels), s.batch_syn, s.syn_steps, s.image_size, DSA_OPERATIONS)
        result = outer_step(self.student, state, frozen, labels, start, target, plan, s.max_lr, record_gradients)
        return StepRecord(result.loss, float(state.lr.detach()), expert, t, result.image_grads)
