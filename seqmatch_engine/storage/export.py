"""A run's distilled set as files for other tools: one safetensors file plus a PNG grid per subset.

    distilled_set.safetensors   S<k>.images, S<k>.labels, S<k>.lr, S<k>.pixels for each subset held;
                                metadata: config, subsets (held), subsets_of_run, partial, note
    S<k>.png                    the subset as a labelled grid

A run that has not learned all its subsets (training, stopped, interrupted) is exported only when asked
(`partial`), and then its metadata and message say which subsets it holds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from seqmatch_engine.core import paths
from seqmatch_engine.core.labels import hard, is_soft
from seqmatch_engine.data.imaging import Panel, labelled_panels, save_png
from seqmatch_engine.storage.files import write_tensors
from seqmatch_engine.storage.runs import RunError, RunFolder


@dataclass(frozen=True)
class Exported:
    folder: Path
    held: int    # subsets written, S1..S<held>
    total: int   # subsets of the run

    @property
    def partial(self) -> bool:
        return self.held < self.total

    def describe(self) -> str:
        if not self.partial:
            return f"exported to {self.folder}"
        return (f"exported a PARTIAL set to {self.folder}: {_names(self.held)} of the run's {self.total} subsets "
                f"(S{self.held + 1} onwards not learned yet); its metadata says so (partial: true)")


def _names(count: int) -> str:
    return "S1" if count == 1 else f"S1-S{count}"


def _state(run: RunFolder) -> str:
    owner = run.lock().owner()
    if owner:
        return f"is training (in {owner.describe()})"
    return f"is {run.status().on_disk}"


def export_set(run: RunFolder, destination: Path | None = None, partial: bool = False) -> Exported:
    """Write the run's set to `destination` (default: the run's export/ folder). RunError for a run without a
    finished subset, or with only some of its subsets unless `partial`."""
    subsets = run.subsets()
    config = run.config()
    total = len(config.distill.subsets)
    if not subsets:
        raise RunError(f"run {run.id} has no finished subset to export yet; it {_state(run)}")
    if len(subsets) < total and not partial:
        raise RunError(f"run {run.id} {_state(run)} and holds {_names(len(subsets))} of its {total} subsets: its set "
                       f"is partial. Finish it first (python -m seqmatch_engine distill --resume {run.path}), or "
                       f"pass --partial to export {_names(len(subsets))} alone, marked as partial")
    destination = Path(destination or run.path / paths.EXPORT_DIR)
    if destination.exists() and not destination.is_dir():
        raise RunError(f"{destination.resolve()} is a file: give --out a folder (new or existing) to write the set to")
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the folder {destination.resolve()} ({error.strerror}): give --out a folder "
                       f"you can write to") from None
    transform = run.transform()
    num_classes = max(s.labels.shape[1] if is_soft(s.labels) else int(s.labels.max()) + 1 for s in subsets)
    names = run.status().class_names or [f"class {c}" for c in range(num_classes)]
    tensors: dict[str, torch.Tensor] = {}
    for k, subset in enumerate(subsets):
        tensors[f"S{k + 1}.images"] = subset.images
        tensors[f"S{k + 1}.labels"] = subset.labels
        tensors[f"S{k + 1}.lr"] = torch.tensor(subset.lr)
        tensors[f"S{k + 1}.pixels"] = transform.to_pixels(subset.images)
        panel = Panel(f"S{k + 1}", f"{len(subset.labels) // num_classes}/class · lr {subset.lr:.4g}", "#111827",
                      transform.to_pixels(subset.images), hard(subset.labels))
        save_png(labelled_panels([panel], names, f"{config.method} · {run.id}"), destination / f"S{k + 1}.png")
    exported = Exported(destination, len(subsets), total)
    note = (f"partial set: {_names(exported.held)} of the run's {total} subsets" if exported.partial
            else f"the run's whole set: {_names(total)}")
    write_tensors(destination / "distilled_set.safetensors", tensors,
                  metadata={"config": json.dumps(config.to_dict()), "subsets": str(len(subsets)),
                            "subsets_of_run": str(total), "partial": json.dumps(exported.partial), "note": note})
    return exported
