"""Coupling diagnostics G1-G4 (see each module's docstring for the exact definitions).

    gradients       G1: per-subset gradient similarity, and the coupling index
    recorder        the distillation driver's G1 hook (records during distillation)
    matching_error  G2: matching error by start epoch of held-out experts
    features        G3: joint feature embedding across an expert's epochs
    hardness        G4: easy / hard test images
    store           the run's diagnostics/ folder
    runner          G2-G4 for a finished run (held-out experts, caching) and the run's summary

Nothing here imports a UI library; views/figures.py turns these results into figures.
"""
from .features import REDUCERS, Embedding
from .gradients import coupling_index, gradient_similarity
from .runner import (
    COMPUTED,
    DiagnosticsOptions,
    RunDiagnostics,
    format_late_errors,
    format_summary,
    load_embedding,
    missing,
    summary,
)

__all__ = ["COMPUTED", "REDUCERS", "DiagnosticsOptions", "Embedding", "RunDiagnostics", "coupling_index",
           "format_late_errors", "format_summary", "gradient_similarity", "load_embedding", "missing", "summary"]
