"""Trajectory matching: the unrolled student, its normalised loss and one outer step.

The student starts at expert parameters theta*_t and takes N differentiable SGD steps on
the synthetic set with a learnable step size alpha:

    theta_{n+1} = theta_n - alpha * grad_theta CE(f(aug(X_B); theta_n), y_B)
    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

All randomness of one unroll (minibatches, augmentation) is drawn up front into an
`UnrollPlan`, so the unroll itself is a pure function of pixels, lr and the plan.

Two ways to get the meta-gradient (same values up to rounding):
- "unrolled": keep the graph of all N steps (memory grows with N x batch);
- "recompute": keep only theta_n of every step, then walk back from N-1 to 0, rebuilding one
  step's graph at a time and applying its vector-Jacobian product (one extra forward +
  first-order backward per step). By default it records the deeper convolutions of each step in
  the forward sweep and replays them in the rebuild (`replay`, conv_replay.py: ~1/9 of a step's
  graph, most of the rebuild's time): ~1/6 of unrolled's memory at any N (bench: 0.16-0.17 at
  N 10-50); recording nothing, ~1/N.
A `ConvNetStudent` (a ConvNet spec + memory mode) takes the fast path with the fused kernels of
models.py; any other forward function takes the generic autograd path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from seqmatch_engine.core.labels import targets
from seqmatch_engine.maths.augment import AugmentationDraw, apply_augmentation, draw_augmentation
from seqmatch_engine.maths.conv_replay import ConvReplay
from seqmatch_engine.maths.memory import tune_cpu_allocator
from seqmatch_engine.maths.models import ConvNetSpec, convnet_forward, fast_convnet_forward, is_conv_bias, unflatten

ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (params (P,), x (B,C,H,W)) -> logits
UNROLL_MODES = ("unrolled", "recompute")  # what config.MEMORY_MODES' "auto" resolves to (memory.py)
# The fast path works through each step's batch in chunks whose first conv output is at most
# about this large, so that a chunk's activations stay in the CPU caches (the loss is a sum over
# images and instance norm is per image, so chunking is exact up to summation order). Measured
# on this project's 2-core CPU: up to 1.5x at the paper config (ConvNet w128, 32x32x3) with the
# norm block in torch ops; with the fused C kernels (native/) 8, 16 and 32 MB tie at paper and
# 16 MB (one chunk of 100 images instead of two of 50) is 1.12x faster at small.
CHUNK_BYTES = 16 << 20


def _check_unroll_mode(mode: str) -> None:
    if mode not in UNROLL_MODES:
        raise ValueError(f"memory mode {mode!r}: choose from {', '.join(UNROLL_MODES)}")


@dataclass(frozen=True)
class ConvNetStudent:
    """A ConvNet forward (callable like `convnet_forward` with the spec bound) that tells the
    matching step to use the fast kernels, which memory mode ("unrolled" | "recompute") and, in
    "recompute", whether rebuilt steps replay their recorded convolutions."""

    spec: ConvNetSpec
    memory_mode: str = "unrolled"
    replay: bool = True

    def __post_init__(self) -> None:
        _check_unroll_mode(self.memory_mode)

    def __call__(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return convnet_forward(params, x, self.spec)


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


class _GenericStep:
    """Student gradients through autograd on any forward(params (P,), x); one piece: the flat vector."""

    def __init__(self, forward: ForwardFn):
        self.forward = forward

    def split(self, start: torch.Tensor) -> list[torch.Tensor]:
        return [start.detach()]

    def join(self, pieces: list[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
        return pieces[0]

    def grads(self, pieces: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              create_graph: bool, batch: int | None = None, convs: None = None) -> tuple[torch.Tensor, ...]:
        loss = F.cross_entropy(self.forward(pieces[0], x), y, reduction="sum") / (batch or len(x))
        return torch.autograd.grad(loss, pieces, create_graph=create_graph)

    def chunk(self, batch: int) -> int:
        return batch  # an arbitrary forward may mix images (e.g. batch norm): never split a batch

    def recorder(self) -> None:
        return None  # nothing to record of an arbitrary forward


class ConvNetStep:
    """Student gradients of the ConvNet with the fused kernels; pieces: every parameter tensor but
    the conv biases, which instance norm cancels (zero gradient: they stay at their start value)."""

    def __init__(self, spec: ConvNetSpec, chunk_bytes: int | None = None):
        self.spec = spec
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES
        self.trainable = [i for i, (name, _) in enumerate(spec.param_shapes()) if not is_conv_bias(name)]

    def split(self, start: torch.Tensor) -> list[torch.Tensor]:
        views = unflatten(start.detach(), self.spec)
        return [views[i] for i in self.trainable]

    def join(self, pieces: list[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
        full: list[torch.Tensor] = list(unflatten(start.detach(), self.spec))
        for i, piece in zip(self.trainable, pieces):
            full[i] = piece
        return torch.cat([t.reshape(-1) for t in full])

    def grads(self, pieces: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              create_graph: bool, batch: int | None = None, convs: ConvReplay | None = None) -> tuple[torch.Tensor, ...]:
        """Gradient of sum(CE) / batch over (x, y) (batch None: mean over x); `convs` records or
        replays the deeper convolutions (conv_replay.py)."""
        full: list = [None] * len(self.spec.param_shapes())
        for i, piece in zip(self.trainable, pieces):
            full[i] = piece
        logits = fast_convnet_forward(full, x, self.spec, graph_input_grad=False, convs=convs)
        loss = F.cross_entropy(logits, y, reduction="sum") / (batch or len(x))
        return torch.autograd.grad(loss, pieces, create_graph=create_graph)

    def recorder(self) -> ConvReplay:
        return ConvReplay()

    def chunk(self, batch: int) -> int:
        """Rows per chunk: equal chunks whose first conv output is at most about CHUNK_BYTES."""
        h, w = self.spec.map_sizes()[0]
        largest = max(1, self.chunk_bytes // (4 * self.spec.width * h * w))
        count = -(-batch // largest)
        return -(-batch // count)


def _stepper(forward: ForwardFn):
    return ConvNetStep(forward.spec) if isinstance(forward, ConvNetStudent) else _GenericStep(forward)


def _batch(images: torch.Tensor, labels: torch.Tensor, step: UnrollStep) -> tuple[torch.Tensor, torch.Tensor]:
    x = images[step.indices.to(images.device)]
    if step.augmentation is not None:
        x = apply_augmentation(x, step.augmentation)
    return x, labels[step.indices.to(labels.device)]


def _chunks(images: torch.Tensor, labels: torch.Tensor, step: UnrollStep, size: int):
    """(x, y) of consecutive chunks of the step's batch, each augmented with its rows of the draw
    (DSA parameters are per image and the ops act per image, so this equals slicing `_batch`)."""
    for i in range(0, len(step.indices), size):
        draw = step.augmentation
        if draw is not None:
            draw = AugmentationDraw(draw.operation, {k: v[i:i + size] for k, v in draw.values.items()})
        yield _batch(images, labels, UnrollStep(step.indices[i:i + size], draw))


def _unrolled(stepper, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
              plan: UnrollPlan) -> torch.Tensor:
    pieces = [p.detach().requires_grad_(True) for p in stepper.split(start)]
    for step in plan:
        grads = None
        for x, y in _step_chunks(stepper, images, labels, step):
            part = stepper.grads(pieces, x, y, True, len(step.indices))
            grads = part if grads is None else [a + b for a, b in zip(grads, part)]
        pieces = [p - lr * g for p, g in zip(pieces, grads)]
    return stepper.join(pieces, start)


class _RecomputedUnroll(torch.autograd.Function):
    """The unroll as one autograd node that stores theta_n per step and recomputes in backward.

    backward walks n = N-1 .. 0 with v = dL/dtheta_{n+1}: it rebuilds step n's gradient g_n with
    create_graph, then dL/dlr -= <v, g_n>, dL/dx += VJP(-lr v) w.r.t. the pixels, and
    dL/dtheta_n = v + VJP(-lr v) w.r.t. theta_n (skipped at n = 0: theta_0 is a constant).
    With `replay`, forward records each step's deeper convolutions (ctx.replays: per step, one
    ConvReplay per chunk), so that a rebuild replays them instead of computing them again.
    """

    @staticmethod
    def forward(ctx, images, lr, labels, stepper, plan, replay, *start_pieces):
        pieces = [p.detach() for p in start_pieces]
        thetas, replays = [], []
        rate = lr.detach()
        for step in plan:
            thetas.append(pieces)
            grads = [torch.zeros_like(p) for p in pieces]
            replays.append([])
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(True) for p in pieces]
                for x, y in _step_chunks(stepper, images.detach(), labels.detach(), step):
                    replays[-1].append(stepper.recorder() if replay else None)
                    for total, g in zip(grads, stepper.grads(leaves, x, y, False, len(step.indices), replays[-1][-1])):
                        total += g
            pieces = [p - rate * g for p, g in zip(pieces, grads)]
        ctx.stepper, ctx.plan, ctx.thetas, ctx.replays = stepper, plan, thetas, replays
        ctx.save_for_backward(images, lr, labels)
        return tuple(pieces)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_pieces):
        images, lr, labels = ctx.saved_tensors
        stepper, plan, thetas = ctx.stepper, ctx.plan, ctx.thetas
        v = [torch.zeros_like(p) if g is None else g for p, g in zip(thetas[-1], grad_pieces)]
        want_x, want_lr, want_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        pixels = images.detach().requires_grad_(want_x)
        soft = labels.detach().requires_grad_(want_y)  # soft targets (n, C) learn too; class indices never do
        grad_x = torch.zeros_like(images) if want_x else None
        grad_y = torch.zeros_like(labels) if want_y else None
        grad_lr = torch.zeros((), dtype=lr.dtype, device=lr.device)
        rate = lr.detach()
        for n in range(len(plan) - 1, -1, -1):
            leaves = [p.detach().requires_grad_(True) for p in thetas[n]]
            parts = _rebuilt_chunk_grads(stepper, leaves, pixels, soft, plan[n], ctx.replays.pop())
            outputs = [-rate * vi for vi in v]
            inputs = (leaves if n > 0 else []) + ([pixels] if want_x else []) + ([soft] if want_y else [])
            dv = [torch.zeros_like(vi) for vi in v] if n > 0 else None
            # g_n is a sum over chunks, so is its vector-Jacobian product: one chunk's graph at a time.
            for grads in parts:
                grad_lr -= sum((vi * gi.detach()).sum() for vi, gi in zip(v, grads))
                if not inputs:
                    continue
                vjp = list(torch.autograd.grad(grads, inputs, grad_outputs=outputs, allow_unused=True))
                if want_y:
                    gy = vjp.pop()
                    if gy is not None:
                        grad_y += gy
                if want_x:
                    gx = vjp.pop()
                    if gx is not None:
                        grad_x += gx
                if n > 0:
                    for total, g in zip(dv, vjp):
                        if g is not None:
                            total += g
            if n > 0:
                v = [vi + d for vi, d in zip(v, dv)]
        ctx.thetas = ctx.replays = None
        return (grad_x, grad_lr if want_lr else None, grad_y) + (None,) * (3 + len(thetas[0]))


def _rebuilt_chunk_grads(stepper, leaves: list[torch.Tensor], pixels: torch.Tensor, labels: torch.Tensor,
                         step: UnrollStep, replays: list[ConvReplay | None]):
    """Step `step`'s gradients at `leaves`, chunk by chunk, each with its graph (built when asked
    for), replaying the convolutions each chunk recorded in the forward sweep."""
    chunks = _step_chunks(stepper, pixels, labels, step)
    for recorded in replays:
        with torch.enable_grad():  # the chunk's augmentation is part of the graph
            x, y = next(chunks)
            grads = stepper.grads(leaves, x, y, True, len(step.indices), recorded and recorded.replay())
        yield grads


def _step_chunks(stepper, images: torch.Tensor, labels: torch.Tensor, step: UnrollStep):
    return _chunks(images, labels, step, stepper.chunk(len(step.indices)))


def _recomputed(stepper, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
                plan: UnrollPlan, replay: bool = True) -> torch.Tensor:
    pieces = _RecomputedUnroll.apply(images, lr, labels, stepper, plan, replay,
                                     *stepper.split(start))
    return stepper.join(list(pieces), start)


def unroll_student(forward: ForwardFn, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                   lr: torch.Tensor, plan: UnrollPlan, memory_mode: str | None = None) -> torch.Tensor:
    """Final student params (P,) after len(plan) SGD steps, differentiable w.r.t. images and lr.

    `memory_mode` ("unrolled" | "recompute") defaults to the forward's own (a ConvNetStudent's,
    which also says whether "recompute" replays convolutions) or "unrolled"; all give the same
    values and gradients up to rounding.
    """
    mode = memory_mode or getattr(forward, "memory_mode", "unrolled")
    _check_unroll_mode(mode)
    if mode == "unrolled":
        return _unrolled(_stepper(forward), start, images, labels, lr, plan)
    return _recomputed(_stepper(forward), start, images, labels, lr, plan, getattr(forward, "replay", True))


def normalised_distance(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||final - target||^2 / ||start - target||^2 (scalar)."""
    return (final - target).pow(2).sum() / (start - target).pow(2).sum()


def matching_loss(forward: ForwardFn, start: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                  labels: torch.Tensor, lr: torch.Tensor, plan: UnrollPlan, memory_mode: str | None = None) -> torch.Tensor:
    """The MTT loss for one expert segment (theta*_t = start, theta*_{t+M} = target)."""
    final = unroll_student(forward, start, images, labels, lr, plan, memory_mode)
    return normalised_distance(final, start, target)


class DivergenceError(RuntimeError):
    """The matching loss, the pixels or the learned lr left the range where optimisation makes sense."""


PIXEL_GROWTH = 20.0  # an image whose RMS exceeds this many times the real images' RMS has exploded


def check_pixels(images: torch.Tensor, pixel_limit: float | None, lr_img: float) -> None:
    """Raise DivergenceError for non-finite pixels, or an image (n, C, H, W) whose RMS exceeds `pixel_limit`."""
    images = images.detach()
    if not bool(torch.isfinite(images).all()):
        raise DivergenceError(f"synthetic pixels became NaN/inf: lower distill.lr_img (now {lr_img:g})")
    if pixel_limit is None or not len(images):
        return
    largest = float(images.flatten(1).pow(2).mean(1).sqrt().max())
    if largest > pixel_limit:
        raise DivergenceError(f"synthetic pixels exploded (an image's RMS reached {largest:.3g}, over "
                              f"{PIXEL_GROWTH:g} times the real images' {pixel_limit / PIXEL_GROWTH:.3g}): "
                              f"lower distill.lr_img (now {lr_img:g})")


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
    """What one stage optimises: its subset's pixels, its lr, where learned its soft label logits, and their SGD
    optimisers."""

    images: torch.Tensor   # (n_k, C, H, W) leaf, requires grad
    lr: torch.Tensor       # () leaf, requires grad
    image_optimizer: torch.optim.Optimizer
    lr_optimizer: torch.optim.Optimizer
    pixel_limit: float | None = None  # largest sane per-image RMS (PIXEL_GROWTH x the real images'); None: unchecked
    labels: torch.Tensor | None = None  # (n_k, C) learned label logits (leaf); None: the stage's labels are fixed
    label_optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def create(cls, images: torch.Tensor, lr: float, lr_img: float, lr_lr: float, momentum: float,
               pixel_limit: float | None = None, labels: torch.Tensor | None = None, lr_label: float = 0.0,
               label_momentum: float = 0.0) -> "MatchingState":
        """A fresh state; with `labels` (n_k, C) the label logits learn too, by SGD at `lr_label`."""
        images = images.detach().clone().requires_grad_(True)
        lr_tensor = torch.tensor(float(lr), device=images.device, requires_grad=True)
        learned = None if labels is None else labels.detach().clone().float().requires_grad_(True)
        return cls(images, lr_tensor, torch.optim.SGD([images], lr=lr_img, momentum=momentum),
                   torch.optim.SGD([lr_tensor], lr=lr_lr, momentum=momentum), pixel_limit, learned,
                   None if learned is None else torch.optim.SGD([learned], lr=lr_label, momentum=label_momentum))

    def optimized(self) -> dict[str, tuple[torch.optim.Optimizer, torch.Tensor]]:
        """Each learned tensor's optimizer, by the name its momentum is checkpointed under."""
        found = {"image_momentum": (self.image_optimizer, self.images), "lr_momentum": (self.lr_optimizer, self.lr)}
        if self.labels is not None:
            found["label_momentum"] = (self.label_optimizer, self.labels)
        return found


@dataclass(frozen=True)
class StepResult:
    loss: float
    image_grads: torch.Tensor | None  # (n, C, H, W) dL/dx for [frozen; learned] when recorded


def outer_step(forward: ForwardFn, state: MatchingState, frozen_images: torch.Tensor, labels: torch.Tensor,
               start: torch.Tensor, target: torch.Tensor, plan: UnrollPlan, max_lr: float,
               record_gradients: bool = False, memory_mode: str | None = None,
               update_below: float | None = None) -> StepResult:
    """One MTT outer iteration on the student data [frozen; state.images] with `labels` of them all: class indices
    (n,), or soft label logits (n, C) taken through their softmax (labels.targets). When the state learns its label
    logits, they stand in for the learned images' rows of `labels` and learn from the same loss.

    Updates state.images, state.lr (and state.labels) in place; with `update_below`, only when the matching loss is
    under it (DATM's gate). With `record_gradients`, also returns the pixel gradient of every image, frozen ones
    included (measured only, never applied). Raises DivergenceError when the loss, the pixels or the lr leave the
    sane range; the caller falls back to its last good snapshot. A `ConvNetStudent` forward runs the fast kernels
    in its memory mode (`memory_mode` overrides it).
    """
    if state.images.device.type == "cpu":
        tune_cpu_allocator()
    frozen = frozen_images.detach().requires_grad_(record_gradients) if len(frozen_images) else None
    images = torch.cat([frozen, state.images]) if frozen is not None else state.images
    if state.labels is not None:
        labels = torch.cat([labels[:len(frozen_images)].to(state.labels.dtype), state.labels])
    loss = matching_loss(forward, start, target, images, targets(labels), state.lr, plan, memory_mode)
    learned = state.optimized()
    for optimizer, _ in learned.values():
        optimizer.zero_grad(set_to_none=True)
    # Only the leaves that are used: no gradient is spent on theta_0 (a constant expert point).
    loss.backward(inputs=[param for _, param in learned.values()]
                  + ([frozen] if record_gradients and frozen is not None else []))
    value = float(loss.detach())
    check_finite_step(value, float(state.lr.detach()), max_lr)
    grads = None
    if record_gradients:
        grads = state.images.grad.detach().clone()
        if frozen is not None:
            grads = torch.cat([frozen.grad.detach(), grads])
    if update_below is None or value < update_below:
        for optimizer, _ in learned.values():
            optimizer.step()
    check_pixels(state.images, state.pixel_limit, state.image_optimizer.param_groups[0]["lr"])  # before the lr:
    check_finite_step(value, float(state.lr.detach()), max_lr)  # exploding pixels are what drive the lr negative
    if state.labels is not None and not bool(torch.isfinite(state.labels.detach()).all()):
        raise DivergenceError("soft label logits became NaN/inf: lower distill.datm.lr_label")
    return StepResult(value, grads)
