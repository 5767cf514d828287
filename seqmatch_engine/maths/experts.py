"""Expert trajectories: nets trained on real data, parameters saved after every epoch; the keys of cached results.

A trajectory is a (E+1, P) tensor: row 0 is the starting point, row e the parameters after
epoch e. Trajectory sets are cached on disk (expert_cache.py) under a key of everything that
determines them: the recipe's settings and the digest of EXPERT_CODE with the torch version.
"""
from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Callable

import torch

from seqmatch_engine.core.paths import PACKAGE_DIR
from seqmatch_engine.maths.augment import DSA_OPERATIONS, augment
from seqmatch_engine.maths.matching import ConvNetStep, draw_minibatches
from seqmatch_engine.maths.memory import tune_cpu_allocator
from seqmatch_engine.maths.models import ConvNetSpec

EpochFn = Callable[[int], None]  # called with the epoch just finished
# First-order steps use smaller chunks than the unroll (measured best at 3-5 MB of first conv output).
EXPERT_CHUNK_BYTES = 4 << 20
# The code between an expert recipe and its trajectories (an edit there trains them again): the dataset as read
# (data), split and normalised (prepare); the seeded generators (seeding); DSA (augment); the net, its initial
# parameters and its fused norm block (models, native); the chunked SGD step and the minibatch order (matching);
# the trajectory loop (this file); the job (jobs); the warm-start curriculum of stage-k experts (evaluate). Not
# in it: the cache (expert_cache), the allocator setting (memory: speed only), the recipe -> job mapping
# (context: its settings are the recipe's values; tests/test_shipped_experts.py retrains a shipped expert to
# catch a change of its seed tags).
EXPERT_CODE = ("data/datasets.py", "data/prepare.py", "core/seeding.py", "maths/augment.py", "maths/models.py",
               "maths/native/__init__.py", "maths/native/norm_relu_pool.c", "maths/matching.py", "maths/experts.py",
               "orchestration/jobs.py", "maths/evaluate.py")


def recipe_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able recipe."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def code_digest(names: tuple[str, ...]) -> str:
    """Digest of the package files `names` (paths inside seqmatch_engine/) and the torch version, for the keys
    of cached results: what other code computed is never served."""
    digest = hashlib.sha256(torch.__version__.encode())
    for name in names:
        digest.update((PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def expert_code_version() -> str:
    """Digest of EXPERT_CODE and the torch version (part of every expert recipe)."""
    return code_digest(EXPERT_CODE)


def tensor_digest(*tensors: torch.Tensor) -> str:
    """Content hash of tensors, for cache keys that depend on learned data."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_trajectory(spec: ConvNetSpec, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor,
                     epochs: int, lr: float, batch_size: int, use_augmentation: bool,
                     generator: torch.Generator, on_epoch: EpochFn | None = None) -> torch.Tensor:
    """Plain SGD (no momentum) on real data from `start` (P,): returns (epochs+1, P) on the CPU.

    Each step runs the fused ConvNet kernels of models.py over cache-sized chunks of the batch
    (the gradient of a mean per-image loss is a sum over chunks); conv biases, which instance
    norm cancels, keep their start value.
    """
    if images.device.type == "cpu":
        tune_cpu_allocator()
    stepper = ConvNetStep(spec, EXPERT_CHUNK_BYTES)
    params = [p.detach().clone() for p in stepper.split(start)]
    trajectory = [start.detach().cpu().clone()]
    steps = -(-len(images) // batch_size)
    for epoch in range(epochs):
        for rows in draw_minibatches(generator, len(images), batch_size, steps):
            rows = rows.to(images.device)
            x = images[rows]
            if use_augmentation:
                x = augment(x, generator, DSA_OPERATIONS)
            params = _sgd_step(stepper, params, x, labels[rows], lr)
        trajectory.append(stepper.join(params, start).cpu().clone())  # a real copy per epoch, on every device
        if on_epoch:
            on_epoch(epoch + 1)
    return torch.stack(trajectory)


def _sgd_step(stepper: ConvNetStep, pieces: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              lr: float) -> list[torch.Tensor]:
    """One SGD step on mean cross-entropy over (x, y), the gradient summed over chunks of the batch."""
    leaves = [p.requires_grad_(True) for p in pieces]
    size = stepper.chunk(len(x))
    grads = [torch.zeros_like(p) for p in pieces]
    for i in range(0, len(x), size):
        for total, g in zip(grads, stepper.grads(leaves, x[i:i + size], y[i:i + size], False, len(x))):
            total += g
    with torch.no_grad():
        return [(p - lr * g).detach() for p, g in zip(pieces, grads)]
