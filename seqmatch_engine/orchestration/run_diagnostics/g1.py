"""G1: per-subset gradient similarity, recorded while distilling (orchestration/gradient_recorder.py); here
only its place in the run's summary, the coupling index."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from seqmatch_engine.diagnostics.gradients import coupling_index
from seqmatch_engine.orchestration.run_diagnostics.base import Diagnostic, number, readable
from seqmatch_engine.storage.diagnostics_store import read_g1


def lacks(run_dir: Path, reducer: str | None, partner: bool) -> bool:
    return not readable(read_g1, run_dir)


def run_coupling_index(run_dir: Path) -> float | None:
    """The coupling index of a run's G1 records (None without two groups, or when the record file is damaged)."""
    records = readable(read_g1, run_dir)
    return coupling_index([record.matrix for record in records]) if records else None


def summary(run_dir: Path) -> dict[str, Any]:
    return {"coupling_index": run_coupling_index(run_dir)}


def summary_lines(values: dict[str, Any]) -> list[str]:
    return [f"coupling index (G1)          {number(values['coupling_index'])}"]


DIAGNOSTIC = Diagnostic("g1", "G1 gradient similarity", None, lacks, summary, summary_lines)
