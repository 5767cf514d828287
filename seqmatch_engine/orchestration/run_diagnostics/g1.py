"""G1: per-subset gradient similarity, recorded while distilling (orchestration/gradient_recorder.py); here
only its place in the run's summary, the coupling index."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from seqmatch_engine.diagnostics.gradients import coupling_index
from seqmatch_engine.orchestration.run_diagnostics.base import Diagnostic, number
from seqmatch_engine.storage.diagnostics_store import read_g1


def lacks(run_dir: Path, reducer: str | None, partner: bool) -> bool:
    return not read_g1(run_dir)


def summary(run_dir: Path) -> dict[str, Any]:
    return {"coupling_index": coupling_index(read_g1(run_dir))}


def summary_lines(values: dict[str, Any]) -> list[str]:
    return [f"coupling index (G1)          {number(values['coupling_index'])}"]


DIAGNOSTIC = Diagnostic("g1", "G1 gradient similarity", None, lacks, summary, summary_lines)
