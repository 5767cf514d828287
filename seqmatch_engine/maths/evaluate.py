"""The evaluation protocol: train fresh nets on U_1, U_2, ..., U_K in order, then test.

Each curriculum stage trains on the union of the subsets so far with that subset's learned
lr: SGD momentum 0.9, weight decay 5e-4, DSA, `epochs` epochs with one x0.1 decay at the
midpoint and a fresh optimiser per stage. Static MTT is a one-stage curriculum.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from seqmatch_engine.core.config import EvalConfig, RunConfig
from seqmatch_engine.core.labels import is_soft, targets
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.data.prepare import PreparedData
from seqmatch_engine.maths.augment import DSA_OPERATIONS, augment
from seqmatch_engine.maths.matching import draw_minibatches


@dataclass(frozen=True)
class CurriculumStage:
    """Train on `images` (n, C, H, W) with `labels` (class indices (n,) or soft logits (n, C)) at learning rate `lr`."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float


def curriculum_from_subsets(subsets: list[tuple[torch.Tensor, torch.Tensor]], lrs: list[float]) -> list[CurriculumStage]:
    """Stages U_1 = S_1, U_2 = S_1 + S_2, ... from per-subset (images, labels) and lrs."""
    stages = []
    for k, lr in enumerate(lrs):
        images = torch.cat([s[0] for s in subsets[:k + 1]])
        labels = torch.cat([s[1] for s in subsets[:k + 1]])
        stages.append(CurriculumStage(images.detach(), labels, float(lr)))
    return stages


def decay_at_midpoint(optimizer: torch.optim.Optimizer, lr: float, epoch: int, epochs: int) -> None:
    """The stage's one lr step: `lr` x 0.1 from epoch epochs // 2 on (called at the start of every epoch)."""
    if epoch == epochs // 2 and epoch > 0:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.1


def train_curriculum(net: nn.Module, stages: list[CurriculumStage], config: EvalConfig,
                     generator: torch.Generator, on_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """Train `net` in place through `stages` in order (see module docstring); `on_epoch(n)` after the n-th
    epoch of the whole curriculum."""
    operations = DSA_OPERATIONS if config.augment else None
    net.train()
    for k, stage in enumerate(stages):
        optimizer = torch.optim.SGD(net.parameters(), lr=stage.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        wanted = targets(stage.labels)  # class indices, or the softmax of soft label logits
        for epoch in range(config.epochs):
            decay_at_midpoint(optimizer, stage.lr, epoch, config.epochs)
            steps = -(-len(stage.images) // config.batch_size)
            for rows in draw_minibatches(generator, len(stage.images), config.batch_size, steps):
                rows = rows.to(stage.images.device)
                x = stage.images[rows]
                if operations:
                    x = augment(x, generator, operations)
                loss = F.cross_entropy(net(x), wanted[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if on_epoch:
                on_epoch(k * config.epochs + epoch + 1)
    return net


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (N,) on the CPU for images (N, C, H, W); the net is left in train mode."""
    net.eval()
    predictions = torch.cat([net(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    net.train()
    return predictions.cpu()


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `net` on images (N, C, H, W)."""
    return int((predict(net, images, batch_size) == labels.cpu()).sum()) / max(len(images), 1)


@dataclass(frozen=True)
class Accuracy:
    """Accuracies of several independently trained nets."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0  # sample std, as studies report

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "values": self.values}

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f} %"


CONTROLS = {
    "first_subset_alone": "S_1 alone with its lr alpha_1 (what the later subsets add)",
    "one_stage": "all subsets together as one stage with the last lr alpha_K (the curriculum's worth)",
    "random_last": "S_1..S_{K-1} as learned, then random real images in place of S_K, same lrs "
                   "(what distilling the last subset adds over real images)",
}


def control_curricula(subsets: list[tuple[torch.Tensor, torch.Tensor]], lrs: list[float], data: PreparedData,
                      seed: int, soft_labels: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                      ) -> dict[str, list[CurriculumStage]]:
    """Evaluation-only controls of a SeqMatch set of K >= 2 subsets (see CONTROLS), by name. For a set with soft
    labels, `soft_labels(images, classes)` labels the random real images of "random_last" the same way."""
    if len(subsets) < 2:
        raise ValueError("controls compare the subsets of a SeqMatch set: it needs at least 2 subsets")
    last_ipc = len(subsets[-1][1]) // data.num_classes
    real = random_real_subset(data.train_images, data.train_labels, data.num_classes, last_ipc,
                              make_generator(seed, "control-random-last"))
    if is_soft(subsets[-1][1]):
        real = (real[0], soft_labels(*real))
    union = (torch.cat([s[0] for s in subsets]), torch.cat([s[1] for s in subsets]))
    return {"first_subset_alone": curriculum_from_subsets(subsets[:1], lrs[:1]),
            "one_stage": curriculum_from_subsets([union], lrs[-1:]),
            "random_last": curriculum_from_subsets([*subsets[:-1], real], lrs)}


def random_real_curriculum(data: PreparedData, config: RunConfig) -> list[CurriculumStage]:
    """The baseline: one stage of `config.ipc` random real images per class at `eval.baseline_lr`."""
    images, labels = random_real_subset(data.train_images, data.train_labels, data.num_classes, config.ipc,
                                        make_generator(config.seed, "random-real"))
    return [CurriculumStage(images, labels, config.eval.baseline_lr)]


def random_real_subset(train_images: torch.Tensor, train_labels: torch.Tensor, num_classes: int, ipc: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random real images per class: images (C*ipc, ...), labels (C*ipc,) grouped by class."""
    rows = []
    for c in range(num_classes):
        candidates = torch.nonzero(train_labels.cpu() == c).flatten()
        if len(candidates) < ipc:
            raise ValueError(f"class {c} has {len(candidates)} training images, fewer than IPC {ipc}; "
                             f"lower the IPC or raise data.train_per_class")
        rows.append(candidates[torch.randperm(len(candidates), generator=generator)[:ipc]])
    rows = torch.cat(rows).to(train_images.device)
    return train_images[rows].clone(), train_labels[rows].clone()
