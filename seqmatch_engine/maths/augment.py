"""Differentiable siamese augmentation (DSA), split into drawing and applying.

`draw_augmentation` picks one operation and its random parameters from a generator;
`apply_augmentation` is a pure, differentiable function of the pixels given that draw.
Splitting the two lets a recomputing backward pass replay exactly the same augmentation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DSA_OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")

BRIGHTNESS = 1.0     # added brightness ~ U(-0.5, 0.5) * BRIGHTNESS
SATURATION = 2.0     # saturation factor ~ U(0, SATURATION)
CONTRAST = 0.5       # contrast factor ~ U(CONTRAST, CONTRAST + 1)
CROP_RATIO = 0.125   # translation up to this fraction of the side, zero padded
CUTOUT_RATIO = 0.5   # side of the cut-out square relative to the image
SCALE_RATIO = 1.2    # per-axis scale ~ U(1/SCALE_RATIO, SCALE_RATIO)
ROTATE_DEGREES = 15.0
FLIP_PROBABILITY = 0.5


@dataclass(frozen=True)
class AugmentationDraw:
    """One operation and its per-image random parameters (tensors with leading dim B)."""

    operation: str
    values: dict[str, torch.Tensor]


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def draw_augmentation(generator: torch.Generator, batch: int, image_size: tuple[int, int],
                      operations: tuple[str, ...] = DSA_OPERATIONS) -> AugmentationDraw:
    """Choose one operation uniformly and draw its parameters for a batch of `batch` images."""
    op = operations[int(torch.randint(len(operations), (1,), generator=generator))]
    h, w = image_size
    if op == "color":
        values = {"brightness": _uniform(generator, (batch,), -0.5, 0.5) * BRIGHTNESS,
                  "saturation": _uniform(generator, (batch,), 0.0, SATURATION),
                  "contrast": _uniform(generator, (batch,), CONTRAST, CONTRAST + 1.0)}
    elif op == "crop":
        sh, sw = int(h * CROP_RATIO + 0.5), int(w * CROP_RATIO + 0.5)
        values = {"dy": torch.randint(-sh, sh + 1, (batch,), generator=generator),
                  "dx": torch.randint(-sw, sw + 1, (batch,), generator=generator)}
    elif op == "cutout":
        values = {"cy": torch.randint(0, h, (batch,), generator=generator),
                  "cx": torch.randint(0, w, (batch,), generator=generator)}
    elif op == "flip":
        values = {"flip": torch.rand((batch,), generator=generator) < FLIP_PROBABILITY}
    elif op == "scale":
        values = {"sx": _uniform(generator, (batch,), 1 / SCALE_RATIO, SCALE_RATIO),
                  "sy": _uniform(generator, (batch,), 1 / SCALE_RATIO, SCALE_RATIO)}
    elif op == "rotate":
        values = {"angle": _uniform(generator, (batch,), -ROTATE_DEGREES, ROTATE_DEGREES) * math.pi / 180}
    else:
        raise ValueError(f"unknown augmentation {op!r}; choose from {', '.join(DSA_OPERATIONS)}")
    return AugmentationDraw(op, values)


def _warp(x: torch.Tensor, theta: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Resample images (B, C, H, W) through affine maps theta (B, 2, 3), zeros outside."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def apply_augmentation(x: torch.Tensor, draw: AugmentationDraw) -> torch.Tensor:
    """Apply `draw` to images x (B, C, H, W); differentiable w.r.t. x."""
    v = {k: t.to(x.device) for k, t in draw.values.items()}
    b, _, h, w = x.shape
    if draw.operation == "color":
        x = x + v["brightness"].view(b, 1, 1, 1).to(x.dtype)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * v["saturation"].view(b, 1, 1, 1).to(x.dtype) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * v["contrast"].view(b, 1, 1, 1).to(x.dtype) + mean
    if draw.operation == "crop":
        # An exact integer shift: sample points land on pixel centres (align_corners=False).
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = -2.0 * v["dx"].float() / w
        theta[:, 1, 2] = -2.0 * v["dy"].float() / h
        return _warp(x, theta, align_corners=False)
    if draw.operation == "cutout":
        half_h, half_w = int(h * CUTOUT_RATIO + 0.5) // 2, int(w * CUTOUT_RATIO + 0.5) // 2
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((rows - v["cy"].view(b, 1, 1)).abs() <= half_h) & ((cols - v["cx"].view(b, 1, 1)).abs() <= half_w)
        return x * (~inside).unsqueeze(1).to(x.dtype)
    if draw.operation == "flip":
        return torch.where(v["flip"].view(b, 1, 1, 1), x.flip(3), x)
    if draw.operation == "scale":
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1] = v["sx"], v["sy"]
        return _warp(x, theta, align_corners=True)
    if draw.operation == "rotate":
        cos, sin = torch.cos(v["angle"]), torch.sin(v["angle"])
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, sin, -sin, cos
        return _warp(x, theta, align_corners=True)
    raise ValueError(f"unknown augmentation {draw.operation!r}")


def augment(x: torch.Tensor, generator: torch.Generator, operations: tuple[str, ...] = DSA_OPERATIONS) -> torch.Tensor:
    """Draw and apply one DSA operation to a batch (B, C, H, W)."""
    return apply_augmentation(x, draw_augmentation(generator, x.shape[0], tuple(x.shape[-2:]), operations))
