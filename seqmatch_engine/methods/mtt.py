"""MTT (Cazenavette et al., 2022): match N student steps on the synthetic set to M expert epochs.

A random expert and start epoch t, N unrolled student steps from theta*_t with the learned lr, loss
||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2; pixels and lr learn by SGD with momentum.
Images start as random real images of their class (or noise); labels are the classes, fixed.
"""
from __future__ import annotations

import torch

from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.data.prepare import PreparedData
from seqmatch_engine.maths.augment import DSA_OPERATIONS
from seqmatch_engine.maths.evaluate import random_real_subset
from seqmatch_engine.maths.matching import ConvNetStudent, MatchingState, draw_unroll_plan, outer_step
from seqmatch_engine.methods.base import StageSetting, StepRecord


def class_labels(num_classes: int, ipc: int, device: torch.device | str) -> torch.Tensor:
    """Labels (num_classes * ipc,) grouped by class: 0,0,..,1,1,.."""
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)


def initial_images(data: PreparedData, ipc: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """Starting pixels (C*ipc, ch, H, W): random real images of each class, or standard noise."""
    if init == "noise":
        shape = (data.num_classes * ipc, data.channels, *data.image_size)
        return torch.randn(shape, generator=generator).to(data.train_images.device)
    images, _ = random_real_subset(data.train_images, data.train_labels, data.num_classes, ipc, generator)
    return images


class MTT:
    name = "mtt"
    soft_labels = False

    def __init__(self, student: ConvNetStudent, setting: StageSetting, init: str = "real"):
        self.student, self.setting, self.init = student, setting, init
        self.state: MatchingState | None = None
        self.labels: torch.Tensor | None = None  # fixed class indices of the learned images
        self.notes: list[str] = []               # what the run should say about how this stage went

    @classmethod
    def from_config(cls, config: RunConfig, student: ConvNetStudent, setting: StageSetting) -> "MTT":
        return cls(student, setting, config.distill.init)

    def initial(self, data: PreparedData, experts: torch.Tensor, ipc: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return (initial_images(data, ipc, self.init, generator),
                class_labels(data.num_classes, ipc, data.train_images.device))

    def begin(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> None:
        s = self.setting
        self.labels = labels
        self.state = MatchingState.create(images, lr, s.lr_img, s.lr_lr, s.momentum, s.pixel_limit)

    def window(self, iteration: int) -> tuple[int, int]:
        return self.setting.interval

    def update_below(self) -> float | None:
        """Optimisers step only when the matching loss is under this (None: always)."""
        return None

    def step(self, experts: torch.Tensor, frozen: torch.Tensor, frozen_labels: torch.Tensor,
             generator: torch.Generator, iteration: int, record_gradients: bool) -> StepRecord:
        s = self.setting
        low, high = self.window(iteration)
        expert = int(torch.randint(len(experts), (1,), generator=generator))
        t = int(torch.randint(low, high - s.expert_epochs, (1,), generator=generator))
        device = self.state.images.device
        start, target = experts[expert, t].to(device), experts[expert, t + s.expert_epochs].to(device)
        labels = torch.cat([frozen_labels.to(device), self.labels_now()])
        plan = draw_unroll_plan(generator, len(labels), s.batch_syn, s.syn_steps, s.image_size, DSA_OPERATIONS)
        result = outer_step(self.student, self.state, frozen, labels, start, target, plan, s.max_lr, record_gradients,
                            update_below=self.update_below())
        return StepRecord(result.loss, float(self.state.lr.detach()), expert, t, result.image_grads)

    def labels_now(self) -> torch.Tensor:
        """The learned images' labels as they stand."""
        return self.labels if self.state.labels is None else self.state.labels.detach()

    def learned(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        return self.state.images.detach(), self.labels_now().clone(), float(self.state.lr.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {"images": self.state.images.detach(), "lr": self.state.lr.detach(), "labels": self.labels_now()}
        for name, (optimizer, param) in self.state.optimized().items():
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                tensors[name] = buffer
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.begin(tensors["images"], tensors["labels"], float(tensors["lr"]))
        for name, (optimizer, param) in self.state.optimized().items():
            if tensors.get(name) is not None:
                optimizer.state[param]["momentum_buffer"] = tensors[name].clone()
