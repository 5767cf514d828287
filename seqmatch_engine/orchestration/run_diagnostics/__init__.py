"""The diagnostics of a finished run, declared once each: G1 (recorded while distilling) and G2-G4 (computed
afterwards on held-out experts). Each module holds one diagnostic whole (compute, when a run lacks it, its
summary numbers and lines) and ends with its DIAGNOSTIC; adding one is a module here and a line in DIAGNOSTICS.
The maths of each lives in seqmatch_engine/diagnostics/, its files in storage/diagnostics_store.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.orchestration.run_diagnostics import g1, g2, g3, g4
from seqmatch_engine.orchestration.run_diagnostics.base import (
    Diagnostic,
    DiagnosticsOptions,
    RunDiagnostics,
    partner_subsets,
)
from seqmatch_engine.orchestration.run_diagnostics.g2 import format_late_errors
from seqmatch_engine.orchestration.run_diagnostics.g3 import load_embedding, overlay_embedding
from seqmatch_engine.storage.runs import RunFolder

DIAGNOSTICS: dict[str, Diagnostic] = {d.name: d for d in (g1.DIAGNOSTIC, g2.DIAGNOSTIC, g3.DIAGNOSTIC, g4.DIAGNOSTIC)}


def computed() -> list[str]:
    """The diagnostics computed after a run (G1 is recorded while distilling), in registry order."""
    return [name for name, d in DIAGNOSTICS.items() if d.compute]


__all__ = ["DIAGNOSTICS", "Diagnostic", "DiagnosticsOptions", "RunDiagnostics", "compute", "computed",
           "format_late_errors", "format_summary", "load_embedding", "missing", "overlay_embedding",
           "partner_subsets", "summary"]


def compute(diagnostics: RunDiagnostics, name: str, progress: ProgressFn | None = None,
            partner: RunFolder | None = None) -> Any:
    """Compute and store diagnostic `name` (one of `computed()`) of the run; G2 of a static run also scores the
    retrained-expert families of its sequential `partner`."""
    found = DIAGNOSTICS.get(name)
    if found is None or found.compute is None:
        raise ValueError(f"unknown diagnostic {name!r}; choose from {', '.join(computed())}")
    return found.compute(diagnostics, progress, partner)


def missing(run_dir: Path, reducer: str | None = None, partner: bool = False) -> list[str]:
    """Which of `computed()` a run folder lacks (G3 also when cached with another `reducer`; G2 also when it lacks
    the families a `partner` adds)."""
    return [name for name in computed() if DIAGNOSTICS[name].lacks(run_dir, reducer, partner)]


def summary(run_dir: Path) -> dict[str, Any]:
    """Every diagnostic's summary numbers (None where absent): G1's coupling index, G2's late-epoch matching
    error per family of held-out trajectories, G4's easy/hard accuracies."""
    return {key: value for d in DIAGNOSTICS.values() for key, value in d.summary(run_dir).items()}


def format_summary(values: dict[str, Any]) -> str:
    """A few readable lines of `summary`'s result."""
    return "\n".join(line for d in DIAGNOSTICS.values() for line in d.summary_lines(values))
