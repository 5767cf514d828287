"""Expert trajectories: nets trained on real data, parameters saved after every epoch.

A trajectory is a (E+1, P) tensor: row 0 is the starting point, row e the parameters after
epoch e. Trajectory sets are cached on disk under a key of everything that determines them;
each expert is its own atomically written file, so a killed job loses at most one expert and
a half-written file is never read.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from .augment import DSA_OPERATIONS, augment
from .matching import ConvNetStep, draw_minibatches
from .memory import tune_cpu_allocator
from .models import ConvNetSpec
from .storage import StorageError, read_json, read_tensors, tensor_shape, write_json, write_tensors

EpochFn = Callable[[int], None]  # called with the epoch just finished
# First-order steps use smaller chunks than the unroll (measured best at 3-5 MB of first conv output).
EXPERT_CHUNK_BYTES = 4 << 20


def recipe_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able recipe."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


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


class ExpertCache:
    """Trajectory sets under `root/<key>/`: recipe.json + expert_000.safetensors, ..."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, recipe: dict[str, Any]) -> Path:
        return self.root / recipe_key(recipe)

    def expert_path(self, recipe: dict[str, Any], index: int) -> Path:
        return self.folder(recipe) / f"expert_{index:03d}.safetensors"

    def cached_count(self, recipe: dict[str, Any], count: int) -> int:
        return sum(self.expert_path(recipe, i).is_file() for i in range(count))

    def missing(self, recipe: dict[str, Any], count: int, shape: tuple[int, int]) -> list[int]:
        """Indices < count without a cached trajectory; records the recipe, and refuses a folder holding
        another recipe's experts or files of the wrong shape (E+1, P)."""
        folder = self.folder(recipe)
        recipe_file = folder / "recipe.json"
        if recipe_file.exists() and read_json(recipe_file) != recipe:
            raise StorageError(f"{folder} holds experts of a different recipe (hash collision or edited "
                               f"file); delete that folder and run again")
        write_json(recipe_file, recipe)
        lacking = []
        for i in range(count):
            path = self.expert_path(recipe, i)
            if not path.is_file():
                lacking.append(i)
                continue
            found = tensor_shape(path, "trajectory")
            if found != tuple(shape):
                raise StorageError(f"{path} has shape {found}, expected {tuple(shape)}; delete {folder} and run again")
        return lacking

    def save(self, recipe: dict[str, Any], index: int, trajectory: torch.Tensor) -> None:
        write_tensors(self.expert_path(recipe, index), {"trajectory": trajectory})

    def load(self, recipe: dict[str, Any], count: int, shape: tuple[int, int]) -> torch.Tensor:
        """Trajectories (count, E+1, P) from the cache; StorageError naming the first one missing."""
        lacking = self.missing(recipe, count, shape)
        if lacking:
            raise StorageError(f"expert {lacking[0]} of {self.folder(recipe)} is not cached yet; train the experts "
                               f"first (a run does, or `python -m seqmatch_engine experts`)")
        return torch.stack([read_tensors(self.expert_path(recipe, i), ("trajectory",))["trajectory"]
                            for i in range(count)])
