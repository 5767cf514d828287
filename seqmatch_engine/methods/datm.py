"""DATM (Guo et al., ICLR 2024): trajectory matching with learned soft labels and a window that moves later.

Over MTT it changes four things (the authors' paper and code, NUS-HPC-AI-Lab/DATM):
- images start as real images that the stage's experts, at their final epoch, classify correctly;
- labels are soft: logits (n, C), initialised per image as the mean final-epoch logits of the experts that
  classify it correctly, and learned by SGD with momentum from the same matching loss, through the student's
  soft cross-entropy at every unrolled step (matching.outer_step);
- the window of start epochs grows: its end rises linearly from `initial_end` to the interval's end over the
  first `growth_iterations` iterations ("difficulty alignment": later, harder epochs as the set learns);
- the optimisers step only when the matching loss is under `update_below`.
"""
from __future__ import annotations

import torch

from seqmatch_engine.core.config import DATMConfig, RunConfig
from seqmatch_engine.data.prepare import PreparedData
from seqmatch_engine.maths.matching import ConvNetStudent, MatchingState
from seqmatch_engine.maths.models import convnet_forward
from seqmatch_engine.methods.base import StageSetting
from seqmatch_engine.methods.mtt import MTT


def window_at(interval: tuple[int, int], initial_end: int | None, growth_iterations: int,
              iteration: int) -> tuple[int, int]:
    """[a, end): end rises linearly from `initial_end` at iteration 0 to b at `growth_iterations` (floored)."""
    a, b = interval
    if initial_end is None or growth_iterations <= 0:
        return a, b
    fraction = min(1.0, iteration / growth_iterations)
    return a, int(initial_end + (b - initial_end) * fraction)


def expert_logits(x: torch.Tensor, classes: torch.Tensor, finals: torch.Tensor, forward) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """Soft labels of images x (B, ...) of known `classes` (B,) from experts' final parameters `finals`
    (n_experts, P): per image the mean logits of the experts that classify it correctly (of all experts when none
    does), and whether any does (B,)."""
    with torch.no_grad():
        logits = torch.stack([forward(f.to(x.device), x) for f in finals])   # (n_experts, B, C)
    right = (logits.argmax(2) == classes.to(x.device)).float()                # (n_experts, B)
    ok = right.sum(0) > 0
    weights = torch.where(ok, right, torch.ones_like(right))
    return (logits * weights.unsqueeze(2)).sum(0) / weights.sum(0).unsqueeze(1), ok


def correct_real_images(data: PreparedData, finals: torch.Tensor, forward, ipc: int, generator: torch.Generator,
                        chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, dict[int, int]]:
    """`ipc` real images per class (grouped by class) that at least one final-epoch expert classifies correctly,
    drawn in a random order, and their soft labels (expert_logits); finals (n_experts, P), forward(params, x) ->
    logits. A class with too few such images is filled with others (labelled by all experts' mean logits): the
    third value counts them by class."""
    images, labels, filled = [], [], {}
    device = data.train_images.device
    for c in range(data.num_classes):
        pool = torch.nonzero(data.train_labels.cpu() == c).flatten()
        pool = pool[torch.randperm(len(pool), generator=generator)]
        kept_images, kept_logits = [], []
        for rows in pool.split(chunk):
            x = data.train_images[rows.to(device)]
            mean, ok = expert_logits(x, torch.full((len(x),), c), finals, forward)
            kept_images.append(x[ok])
            kept_logits.append(mean[ok])
            if sum(len(k) for k in kept_images) >= ipc:
                break
        found, logits = torch.cat(kept_images)[:ipc], torch.cat(kept_logits)[:ipc]
        if len(found) < ipc:  # every candidate was seen: fill with the first ones that were passed over
            filled[c] = ipc - len(found)
            x = data.train_images[pool.to(device)]
            mean, ok = expert_logits(x, torch.full((len(x),), c), finals, forward)
            found, logits = torch.cat([found, x[~ok][:filled[c]]]), torch.cat([logits, mean[~ok][:filled[c]]])
        images.append(found)
        labels.append(logits)
    return torch.cat(images), torch.cat(labels), filled


class DATM(MTT):
    name = "datm"
    soft_labels = True

    def __init__(self, student: ConvNetStudent, setting: StageSetting, datm: DATMConfig):
        super().__init__(student, setting, "real")
        self.datm = datm

    @classmethod
    def from_config(cls, config: RunConfig, student: ConvNetStudent, setting: StageSetting) -> "DATM":
        return cls(student, setting, config.distill.datm)

    def initial(self, data: PreparedData, experts: torch.Tensor, ipc: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.student.spec
        images, labels, filled = correct_real_images(data, experts[:, -1], lambda p, x: convnet_forward(p, x, spec),
                                                     ipc, generator)
        if filled:
            names = ", ".join(f"{data.class_names[c]} ({n})" for c, n in filled.items())
            self.notes.append(f"the experts classify too few training images of some classes correctly to start DATM "
                              f"from correct ones only; filled with others: {names}. Train the experts longer for "
                              f"DATM's initialisation")
        return images, labels

    def begin(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> None:
        s, d = self.setting, self.datm
        self.labels = labels
        self.state = MatchingState.create(images, lr, s.lr_img, s.lr_lr, s.momentum, s.pixel_limit, labels,
                                          d.lr_label, d.label_momentum)

    def window(self, iteration: int) -> tuple[int, int]:
        return window_at(self.setting.interval, self.datm.initial_end, self.datm.growth_iterations, iteration)

    def update_below(self) -> float | None:
        return self.datm.update_below
