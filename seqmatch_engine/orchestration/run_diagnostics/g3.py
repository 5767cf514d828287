"""G3: a joint embedding of real and synthetic features across an expert's epochs (diagnostics/features.py),
stored as diagnostics/g3.safetensors + g3.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.diagnostics.features import Embedding, PointSet, checkpoint_epochs, joint_embedding
from seqmatch_engine.orchestration.run_diagnostics.base import Diagnostic, RunDiagnostics
from seqmatch_engine.storage.diagnostics_store import read_g3, write_g3
from seqmatch_engine.storage.runs import RunFolder


def compute(diagnostics: RunDiagnostics, progress: ProgressFn | None = None,
            partner: RunFolder | None = None) -> Embedding:
    """Joint embedding of real + synthetic features under held-out expert 0; cached in the run folder."""
    d = diagnostics
    trajectory = d.held_out_experts()[0]
    epochs = checkpoint_epochs(trajectory.shape[0] - 1, d.options.checkpoints)
    embedding = joint_embedding(trajectory, epochs, d.points(), d.spec, d.options.reducer, d.config.seed,
                                list(d.data.class_names), d.device, progress)
    write_g3(d.run.path, embedding.tensors(), {**embedding.info(), "run": d.run.id})
    return embedding


def lacks(run_dir: Path, reducer: str | None, partner: bool) -> bool:
    """Absent, or cached with another reducer than `reducer` (None: any will do)."""
    found = read_g3(run_dir)
    return found is None or (reducer is not None and found[1].get("reducer") != reducer)


@torch.no_grad()
def load_embedding(run_dir: Path) -> Embedding | None:
    """The cached G3 embedding of a run folder, or None."""
    found = read_g3(run_dir)
    return Embedding.from_parts(*found) if found else None


def overlay_embedding(runs: list[RunDiagnostics], labels: list[str], reducer: str = "pca",
                      progress: ProgressFn | None = None) -> Embedding:
    """One joint embedding of several runs' sets (sources = labels) and the first run's real sample.

    Uses the first run's held-out expert 0 and data; the runs should share data and net settings.
    """
    first = runs[0]
    points = PointSet.concat([first.points(labels[0])] +
                             [r.points(label, with_real=False) for r, label in zip(runs[1:], labels[1:], strict=True)])
    trajectory = first.held_out_experts()[0]
    epochs = checkpoint_epochs(trajectory.shape[0] - 1, first.options.checkpoints)
    return joint_embedding(trajectory, epochs, points, first.spec, reducer, first.config.seed,
                           list(first.data.class_names), first.device, progress)


def summary(run_dir: Path) -> dict[str, Any]:
    return {}  # a picture, not a number


def summary_lines(values: dict[str, Any]) -> list[str]:
    return []


DIAGNOSTIC = Diagnostic("g3", "G3 features", compute, lacks, summary, summary_lines)
