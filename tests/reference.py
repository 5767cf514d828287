"""Independent reference implementations the engine's maths is checked against.

Nothing here calls the engine's forward or unroll: the ConvNet is an ordinary nn.Sequential
and the student is trained by a hand-written SGD loop.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqmatch_engine.maths.models import ConvNetSpec


def reference_convnet(spec: ConvNetSpec) -> nn.Sequential:
    """The ConvNet written as layers, without weights copied in yet."""
    layers, cin = [], spec.channels
    for d in range(spec.depth):
        padding = 3 if cin == 1 and d == 0 else 1  # MTT's ConvNet pads 1-channel input by 3
        layers += [nn.Conv2d(cin, spec.width, 3, padding=padding), nn.GroupNorm(spec.width, spec.width),
                   nn.ReLU(), nn.AvgPool2d(2)]
        cin = spec.width
    layers += [nn.Flatten(), nn.Linear(spec.feature_dim, spec.num_classes)]
    return nn.Sequential(*layers)


def load_flat(net: nn.Sequential, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat vector into the Sequential's named parameters (conv w, b, norm w, b, ..., fc w, b)."""
    named, offset = {}, 0
    for name, param in net.named_parameters():
        n = param.numel()
        named[name] = flat[offset:offset + n].view_as(param)
        offset += n
    assert offset == flat.numel(), (offset, flat.numel())
    return named


def reference_unroll(spec: ConvNetSpec, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                     lr: torch.Tensor, batches: list[torch.Tensor], augmentations: list) -> torch.Tensor:
    """Student SGD through torch.func.functional_call on the layered net, keeping the full graph."""
    net = reference_convnet(spec).to(start.dtype)
    params = load_flat(net, start.detach().clone().requires_grad_(True))
    names = list(params)
    for rows, augmentation in zip(batches, augmentations):
        x = images[rows]
        if augmentation is not None:
            x = augmentation(x)
        logits = torch.func.functional_call(net, params, (x,))
        loss = F.cross_entropy(logits, labels[rows])
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        params = {n: params[n] - lr * g for n, g in zip(names, grads)}
    return torch.cat([params[n].reshape(-1) for n in names])


def plain_sgd_student(spec: ConvNetSpec, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                      lr: float, batches: list[torch.Tensor], augmentations: list) -> torch.Tensor:
    """An ordinary training loop: nn.Module, .backward(), p -= lr * p.grad (no graph kept)."""
    net = reference_convnet(spec).to(start.dtype)
    with torch.no_grad():
        for param, value in zip(net.parameters(), load_flat(net, start).values()):
            param.copy_(value)
    for rows, augmentation in zip(batches, augmentations):
        x = images[rows]
        if augmentation is not None:
            x = augmentation(x)
        net.zero_grad()
        F.cross_entropy(net(x), labels[rows]).backward()
        with torch.no_grad():
            for param in net.parameters():
                param -= lr * param.grad
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def param_count(spec: ConvNetSpec) -> int:
    return sum(math.prod(p.shape) for p in reference_convnet(spec).parameters())
