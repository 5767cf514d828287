"""Trajectory matching: the unrolled student, its normalised loss and one outer step.

The student starts at expert parameters theta*_t and takes N differentiable SGD steps on
the synthetic set with a learnable step size alpha:

    theta_{n+1} = theta_n - alpha * grad_theta CE(f(aug(X_B); theta_n), y_B)
    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

All randomness of one unroll (minibatches, augmentation) is drawn up front into an
`UnrollPlan`, so the unroll itself is a pure function of pixels, lr and the plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .augment import AugmentationDraw, apply_augmentation, draw_augmentation

ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (params (P,), x (B,C,H,W)) -> logits


@dataclass(frozen=True)
class UnrollStep:
    indices: torch.Tensor                  # (B,) rows of the synthetic set in this minibatch
    augmentation: AugmentationDraw | None  # None: no augmentation


UnrollPlan = list[UnrollStep]


def draw_minibatches(generator: torch.Generator, num_images: int, batch_size: int, steps: int) -> list[torch.Tensor]:
    """`steps` minibatches of indices: chunks of a shuffled order, reshuffled when used up."""
    batches: list[torch.Tensor] = []
    order = torch.empty(0, dtype=torch.long)
    while len(batches) < steps:
        if len(order) == 0:
            order = torch.randperm(num_images, generator=generator)
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def draw_unroll_plan(generator: torch.Generator, num_images: int, batch_size: int, steps: int,
                     image_size: tuple[int, int], operations: tuple[str, ...] | None) -> UnrollPlan:
    """Minibatches and augmentation draws for one unroll (operations None: no augmentation)."""
    plan = []
    for indices in draw_minibatches(generator, num_images, batch_size, steps):
        draw = draw_augmentation(generator, len(indices), image_size, operations) if operations else None
        plan.append(UnrollStep(indices, draw))
    return plan


def student_step_loss(forward: ForwardFn, params: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                      step: UnrollStep) -> torch.Tensor:
    """Cross-entropy of the student on one planned minibatch."""
    x = images[step.indices.to(images.device)]
    if step.augmentation is not None:
        x = apply_augmentation(x, step.augmentation)
    return F.cross_entropy(forward(params, x), labels[step.indices.to(labels.device)])


def unroll_student(forward: ForwardFn, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                   lr: torch.Tensor, plan: UnrollPlan) -> torch.Tensor:
    """Final student params (P,) after len(plan) SGD steps, differentiable w.r.t. images and lr."""
    params = start.detach().requires_grad_(True)
    for step in plan:
        loss = student_step_loss(forward, params, images, labels, step)
        (grad,) = torch.autograd.grad(loss, params, create_graph=True)
        params = params - lr * grad
    return params


def normalised_distance(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||final - target||^2 / ||start - target||^2 (scalar)."""
    return (final - target).pow(2).sum() / (start - target).pow(2).sum()


def matching_loss(forward: ForwardFn, start: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                  labels: torch.Tensor, lr: torch.Tensor, plan: UnrollPlan) -> torch.Tensor:
    """The MTT loss for one expert segment (theta*_t = start, theta*_{t+M} = target)."""
    final = unroll_student(forward, start, images, labels, lr, plan)
    return normalised_distance(final, start, target)


class DivergenceError(RuntimeError):
    """The matching loss or the learned lr left the range where optimisation makes sense."""


def check_finite_step(loss: float, lr: float, max_lr: float) -> None:
    """Raise DivergenceError for a NaN/inf loss or a non-positive or exploding learned lr."""
    if not torch.isfinite(torch.tensor(loss)):
        raise DivergenceError(f"matching loss became {loss}: lower distill.lr_img or distill.lr_lr, "
                              f"or use fewer distill.syn_steps")
    if not lr > 0:
        raise DivergenceError(f"learned lr became {lr:.3g} (must stay positive): lower distill.lr_lr")
    if lr > max_lr:
        raise DivergenceError(f"learned lr exploded to {lr:.3g} (above distill.max_lr = {max_lr}): "
                              f"lower distill.lr_lr")


@dataclass
class MatchingState:
    """What one stage optimises: its subset's pixels, its lr, and their SGD optimisers."""

    images: torch.Tensor   # (n_k, C, H, W) leaf, requires grad
    lr: torch.Tensor       # () leaf, requires grad
    image_optimizer: torch.optim.Optimizer
    lr_optimizer: torch.optim.Optimizer

    @classmethod
    def create(cls, images: torch.Tensor, lr: float, lr_img: float, lr_lr: float, momentum: float) -> "MatchingState":
        images = images.detach().clone().requires_grad_(True)
        lr_tensor = torch.tensor(float(lr), device=images.device, requires_grad=True)
        return cls(images, lr_tensor,
                   torch.optim.SGD([images], lr=lr_img, momentum=momentum),
                   torch.optim.SGD([lr_tensor], lr=lr_lr, momentum=momentum))


@dataclass(frozen=True)
class StepResult:
    loss: float
    image_grads: torch.Tensor | None  # (n, C, H, W) dL/dx for [frozen; learned] when recorded


def outer_step(forward: ForwardFn, state: MatchingState, frozen_images: torch.Tensor, labels: torch.Tensor,
               start: torch.Tensor, target: torch.Tensor, plan: UnrollPlan, max_lr: float,
               record_gradients: bool = False) -> StepResult:
    """One MTT outer iteration on the student data [frozen; state.images] with labels (n,).

    Updates state.images and state.lr in place. With `record_gradients`, also returns the
    pixel gradient of every image, frozen ones included (measured only, never applied).
    Raises DivergenceError when the loss, the pixels or the lr leave the sane range; the
    caller falls back to its last good snapshot.
    """
    frozen = frozen_images.detach().requires_grad_(record_gradients) if len(frozen_images) else None
    images = torch.cat([frozen, state.images]) if frozen is not None else state.images
    loss = matching_loss(forward, start, target, images, labels, state.lr, plan)
    state.image_optimizer.zero_grad(set_to_none=True)
    state.lr_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    value = float(loss.detach())
    check_finite_step(value, float(state.lr.detach()), max_lr)
    grads = None
    if record_gradients:
        grads = state.images.grad.detach().clone()
        if frozen is not None:
            grads = torch.cat([frozen.grad.detach(), grads])
    state.image_optimizer.step()
    state.lr_optimizer.step()
    if not bool(torch.isfinite(state.images.detach()).all()):
        raise DivergenceError("synthetic pixels became NaN/inf: lower distill.lr_img")
    check_finite_step(value, float(state.lr.detach()), max_lr)
    return StepResult(value, grads)
