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
import torch.nn.functional as F

from .augment import DSA_OPERATIONS, augment
from .matching import draw_minibatches
from .models import ConvNetSpec, convnet_forward
from .storage import StorageError, read_json, read_tensors, write_json, write_tensors

EpochFn = Callable[[int], None]  # called with the epoch just finished


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
    """Plain SGD (no momentum) on real data from `start` (P,): returns (epochs+1, P) on the CPU."""
    params = start.detach().clone()
    trajectory = [params.cpu().clone()]
    steps = -(-len(images) // batch_size)
    for epoch in range(epochs):
        for rows in draw_minibatches(generator, len(images), batch_size, steps):
            rows = rows.to(images.device)
            x = images[rows]
            if use_augmentation:
                x = augment(x, generator, DSA_OPERATIONS)
            params.requires_grad_(True)
            loss = F.cross_entropy(convnet_forward(params, x, spec), labels[rows])
            (grad,) = torch.autograd.grad(loss, params)
            params = (params - lr * grad).detach()
        trajectory.append(params.cpu().clone())  # a real copy per epoch, on every device
        if on_epoch:
            on_epoch(epoch + 1)
    return torch.stack(trajectory)


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

    def load_or_train(self, recipe: dict[str, Any], count: int, shape: tuple[int, int],
                      train_one: Callable[[int], torch.Tensor],
                      on_expert: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Trajectories (count, E+1, P): cached files are read, missing ones trained and saved.

        `train_one(i)` trains expert i; `shape` is (E+1, P) and guards against stale files.
        """
        folder = self.folder(recipe)
        recipe_file = folder / "recipe.json"
        if recipe_file.exists() and read_json(recipe_file) != recipe:
            raise StorageError(f"{folder} holds experts of a different recipe (hash collision or edited "
                               f"file); delete that folder and run again")
        write_json(recipe_file, recipe)
        trajectories = []
        for i in range(count):
            path = self.expert_path(recipe, i)
            if path.is_file():
                trajectory = read_tensors(path, ("trajectory",))["trajectory"]
                if tuple(trajectory.shape) != tuple(shape):
                    raise StorageError(f"{path} has shape {tuple(trajectory.shape)}, expected {tuple(shape)}; "
                                       f"delete {folder} and run again")
            else:
                trajectory = train_one(i)
                write_tensors(path, {"trajectory": trajectory})
            trajectories.append(trajectory)
            if on_expert:
                on_expert(i + 1, count)
        return torch.stack(trajectories)
