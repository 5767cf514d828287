"""What the bench sections share: the problems they time, the plain references written without any trick (the
functional ConvNet from a flat parameter vector, the full unrolled graph through torch.autograd.grad with
create_graph=True, an nn.Sequential ConvNet), and the table helpers."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqmatch_engine.maths.augment import apply_augmentation
from seqmatch_engine.maths.matching import normalised_distance
from seqmatch_engine.maths.models import ConvNetSpec, unflatten


@dataclass(frozen=True)
class Problem:
    name: str
    spec: ConvNetSpec
    ipc: int = 10
    syn_steps: int = 10

    @property
    def num_images(self) -> int:
        return self.spec.num_classes * self.ipc


PROBLEMS = {
    "small": Problem("small", ConvNetSpec(1, (28, 28), 10, width=32, depth=3)),
    "paper": Problem("paper", ConvNetSpec(3, (32, 32), 10, width=128, depth=3)),
}


# -- the plain references ------------------------------------------------------------------------------
def plain_forward(flat: torch.Tensor, x: torch.Tensor, spec: ConvNetSpec) -> torch.Tensor:
    """The ConvNet from a flat parameter vector, the obvious way."""
    params = unflatten(flat, spec)
    for d in range(spec.depth):
        w, b, gamma, beta = params[4 * d: 4 * d + 4]
        padding = 3 if d == 0 and spec.channels == 1 else 1  # MTT's ConvNet pads 1-channel input by 3
        x = F.avg_pool2d(F.relu(F.group_norm(F.conv2d(x, w, b, padding=padding), spec.width, gamma, beta)), 2)
    return F.linear(x.flatten(1), params[-2], params[-1])


def plain_matching_loss(spec: ConvNetSpec, start: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                        labels: torch.Tensor, lr: torch.Tensor, plan) -> torch.Tensor:
    """Unrolled student with the full graph, then the normalised distance."""
    params = start.detach().requires_grad_(True)
    for step in plan:
        x = images[step.indices]
        if step.augmentation is not None:
            x = apply_augmentation(x, step.augmentation)
        loss = F.cross_entropy(plain_forward(params, x, spec), labels[step.indices])
        (grad,) = torch.autograd.grad(loss, params, create_graph=True)
        params = params - lr * grad
    return normalised_distance(params, start, target)


def plain_convnet(spec: ConvNetSpec) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = spec.channels
    for d in range(spec.depth):
        padding = 3 if d == 0 and cin == 1 else 1  # MTT's ConvNet pads 1-channel input by 3
        layers += [nn.Conv2d(cin, spec.width, 3, padding=padding), nn.GroupNorm(spec.width, spec.width), nn.ReLU(),
                   nn.AvgPool2d(2)]
        cin = spec.width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(spec.feature_dim, spec.num_classes))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / max(float(b.double().norm()), 1e-30))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
