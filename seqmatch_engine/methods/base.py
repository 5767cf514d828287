"""The method protocol: what one stage's distillation method owns and does, and what it tells the driver.

A method owns what it learns (images, lr and, where it learns them, soft label logits: a MatchingState with their
optimisers), its initialisation from real data and the stage's experts, its window of start epochs at each
iteration, one outer step, and a state dict for checkpoints. The driver (seqmatch.py) calls nothing else; the
schedule (one subset = static, K subsets = sequential) is the driver's, so every objective runs both ways.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.data.prepare import PreparedData
from seqmatch_engine.maths.matching import ConvNetStudent, MatchingState


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
    lr_img: float               # SGD on the pixels ...
    lr_lr: float                # ... and on the learned lr, both with `momentum`
    momentum: float
    pixel_limit: float | None   # largest sane per-image RMS (matching.check_pixels)


class Method(Protocol):
    name: str
    soft_labels: bool           # whether its labels are soft logits (n, C) rather than class indices (n,)
    state: MatchingState        # what it learns, set by begin() or load_state_dict()
    notes: list[str]            # what the run should say (e.g. how initialisation had to compromise)

    @classmethod
    def from_config(cls, config: RunConfig, student: ConvNetStudent, setting: StageSetting) -> "Method":
        """The method for one stage of a run of `config` (its settings: config.distill.<name>, if any)."""
        ...

    def initial(self, data: PreparedData, experts: torch.Tensor, ipc: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting images (C*ipc, ch, H, W) grouped by class, and their labels, from real data and `experts`
        (n, E+1, P); draws from `generator` only."""
        ...

    def begin(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> None:
        """Start learning from these images, labels and lr (fresh optimisers)."""
        ...

    def window(self, iteration: int) -> tuple[int, int]:
        """[a, b): the start epochs t matched at outer iteration `iteration` (0-based) satisfy a <= t < b - M."""
        ...

    def step(self, experts: torch.Tensor, frozen: torch.Tensor, frozen_labels: torch.Tensor,
             generator: torch.Generator, iteration: int, record_gradients: bool) -> StepRecord:
        """Outer iteration `iteration` (0-based) on [frozen; learned] against trajectories `experts` (n, E+1, P);
        draws from `generator` only. Raises DivergenceError."""
        ...

    def learned(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The images, labels and lr as they stand (detached)."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything it learns and its optimisers' momenta, for a checkpoint."""
        ...

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Continue from a state_dict (a resumed checkpoint)."""
        ...
