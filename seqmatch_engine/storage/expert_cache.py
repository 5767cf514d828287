"""The expert cache: trajectory sets filed by their recipe, with read-only shipped sets behind it.

    <experts root>/<recipe key>/recipe.json, expert_000.safetensors, ...   written by runs, one atomic file per
                                                                           expert (a killed job loses at most one)
    assets/experts/<preset>.safetensors                                    shipped with the app, never written at run
                                                                           time (scripts/make_demo_experts.py)

A recipe holds everything that determines its trajectories, the digest of the code that trains them included
(experts.EXPERT_CODE), so experts of other code sit under another key and are never served. An expert the
cache folder lacks is read from the shipped set of the same recipe, if one holds it: a fresh install's demo
presets go straight to distilling. A shipped file holds "trajectories" (n, E+1, P) and, in its metadata, the
recipe (JSON) and the preset it was made for.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from seqmatch_engine.core import paths
from seqmatch_engine.core.seeding import machine_signature
from seqmatch_engine.maths.experts import recipe_key
from seqmatch_engine.storage.files import StorageError, read_json, read_tensors, tensor_shape, write_json, write_tensors

SHIPPED_PRESETS = ("cpu-demo", "cpu-smoke")  # presets whose stage-1 experts ship in assets/experts/
SHIPPED_TENSOR = "trajectories"
REGENERATE = "python scripts/make_demo_experts.py"


@dataclass(frozen=True)
class ShippedSet:
    """One shipped file's trajectories of one recipe: `count` experts of shape `shape` (E+1, P)."""

    path: Path
    recipe: dict[str, Any]
    count: int
    shape: tuple[int, ...]
    machine: dict[str, str] | None = None  # where they were trained (seeding.machine_signature)

    def read(self, index: int) -> torch.Tensor:
        """Trajectory `index` (E+1, P), read from the file without loading the others."""
        with safe_open(str(self.path), "pt") as handle:
            return handle.get_slice(SHIPPED_TENSOR)[index]


def shipped_sets(folder: Path) -> list[ShippedSet]:
    """The shipped sets in `folder`; an unreadable file is skipped with a warning (its experts are trained)."""
    found = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
                recipe = json.loads(metadata["recipe"])
                machine = json.loads(metadata["machine"]) if "machine" in metadata else None
                shape = tuple(handle.get_slice(SHIPPED_TENSOR).get_shape())
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            warnings.warn(f"{path} is not a readable set of shipped experts ({type(error).__name__}: {error}), so "
                          f"its experts are trained instead; restore the file from the repository or regenerate "
                          f"it: {REGENERATE}", stacklevel=2)
            continue
        found.append(ShippedSet(path, recipe, shape[0], shape[1:], machine))
    return found


def write_shipped(path: Path, recipe: dict[str, Any], trajectories: torch.Tensor, preset: str) -> None:
    """Write a shipped set: `trajectories` (n, E+1, P) of `recipe`, made for `preset` on this machine."""
    write_tensors(path, {SHIPPED_TENSOR: trajectories}, {"recipe": json.dumps(recipe, sort_keys=True),
                                                         "preset": preset,
                                                         "machine": json.dumps(machine_signature(), sort_keys=True)})


def without_code(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe less its code digest: what two sets of experts trained by different code share."""
    return {k: v for k, v in recipe.items() if k != "code"}


class ExpertCache:
    """Trajectory sets under `root/<key>/`: recipe.json + expert_000.safetensors, ...; experts it lacks are read
    from the shipped sets in `shipped` (default: assets/experts/) when one holds their recipe."""

    def __init__(self, root: Path, shipped: Path | None = None):
        self.root = Path(root)
        self.shipped = Path(shipped) if shipped else paths.SHIPPED_EXPERTS_DIR

    def folder(self, recipe: dict[str, Any]) -> Path:
        return self.root / recipe_key(recipe)

    def expert_path(self, recipe: dict[str, Any], index: int) -> Path:
        return self.folder(recipe) / f"expert_{index:03d}.safetensors"

    def shipped_set(self, recipe: dict[str, Any]) -> ShippedSet | None:
        """The shipped set of exactly `recipe` (code digest included), if any."""
        return next((s for s in shipped_sets(self.shipped) if s.recipe == recipe), None)

    def cached_count(self, recipe: dict[str, Any], count: int) -> int:
        """How many of experts 0..count-1 are cached or shipped."""
        shipped = self.shipped_set(recipe)
        served = shipped.count if shipped else 0
        return sum(i < served or self.expert_path(recipe, i).is_file() for i in range(count))

    def missing(self, recipe: dict[str, Any], count: int, shape: tuple[int, int]) -> list[int]:
        """Indices < count with no trajectory, cached or shipped; records the recipe, and refuses a folder holding
        another recipe's experts or files of the wrong shape (E+1, P)."""
        folder = self.folder(recipe)
        recipe_file = folder / "recipe.json"
        if recipe_file.exists() and read_json(recipe_file) != recipe:
            raise StorageError(f"{folder} holds experts of a different recipe (hash collision or edited "
                               f"file); delete that folder and run again")
        write_json(recipe_file, recipe)
        shipped = self.shipped_set(recipe)
        if shipped and shipped.shape != tuple(shape):
            raise StorageError(f"{shipped.path} holds trajectories of shape {shipped.shape}, expected {tuple(shape)} "
                               f"for its recipe; regenerate it: {REGENERATE}")
        lacking = []
        for i in range(count):
            path = self.expert_path(recipe, i)
            if path.is_file():
                found = tensor_shape(path, "trajectory")
                if found != tuple(shape):
                    raise StorageError(f"{path} has shape {found}, expected {tuple(shape)}; delete {folder} and run "
                                       f"again")
            elif not (shipped and i < shipped.count):
                lacking.append(i)
        return lacking

    def save(self, recipe: dict[str, Any], index: int, trajectory: torch.Tensor) -> None:
        write_tensors(self.expert_path(recipe, index), {"trajectory": trajectory})

    def load(self, recipe: dict[str, Any], count: int, shape: tuple[int, int]) -> torch.Tensor:
        """Trajectories (count, E+1, P), each from the cache folder, else from the shipped set; StorageError naming
        the first one missing."""
        lacking = self.missing(recipe, count, shape)
        if lacking:
            raise StorageError(f"expert {lacking[0]} of {self.folder(recipe)} is not cached yet; train the experts "
                               f"first (a run does, or `python -m seqmatch_engine experts`)")
        shipped = self.shipped_set(recipe)
        return torch.stack([self._read(recipe, i, shipped) for i in range(count)])

    def _read(self, recipe: dict[str, Any], index: int, shipped: ShippedSet | None) -> torch.Tensor:
        """Trajectory `index` (E+1, P): the cache folder's file, else the shipped set's (load checked it is there)."""
        path = self.expert_path(recipe, index)
        return read_tensors(path, ("trajectory",))["trajectory"] if path.is_file() else shipped.read(index)

    def retrain_note(self, recipe: dict[str, Any], count: int) -> str | None:
        """Why experts 0..count-1 of `recipe` are trained although experts of its settings exist (they were trained
        by other code); None when none is trained or no such experts exist."""
        if self.cached_count(recipe, count) == count or (found := self._other_code(recipe)) is None:
            return None
        where, other, fix = found
        return (f"the experts in {where} were trained by other code (code {other.get('code', 'not recorded')}, now "
                f"{recipe.get('code')}: the expert-training code or torch changed), so they are not used and these "
                f"experts are trained again; {fix}")

    def _other_code(self, recipe: dict[str, Any]) -> tuple[Path, dict[str, Any], str] | None:
        """Where experts of `recipe`'s settings but another code digest lie (a cache folder, which a folder from
        before code was keyed is too, else a shipped file), the recipe they were made with, and what to do."""
        wanted = without_code(recipe)
        for recipe_file in sorted(self.root.glob("*/recipe.json")):
            try:
                other = read_json(recipe_file)
            except StorageError:
                continue
            if isinstance(other, dict) and other != recipe and without_code(other) == wanted:
                return recipe_file.parent, other, "delete that folder to free its space"
        for shipped in shipped_sets(self.shipped):
            if shipped.recipe != recipe and without_code(shipped.recipe) == wanted:
                return shipped.path, shipped.recipe, f"to ship current ones: {REGENERATE}"
        return None
