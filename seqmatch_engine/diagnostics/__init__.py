"""Coupling diagnostics G1-G4: the computations (see each module's docstring for the exact definitions).

    gradients       G1: per-subset gradient similarity, and the coupling index
    matching_error  G2: matching error by start epoch of held-out experts
    features        G3: joint feature embedding across an expert's epochs
    hardness        G4: easy / hard test images

Their records live in the run's diagnostics/ folder (storage/diagnostics_store.py); the driver's G1 hook is
orchestration/gradient_recorder.py, and each diagnostic of a finished run (held-out experts, caching, its
summary) is a module of orchestration/run_diagnostics/ with one line in its registry. Nothing here imports a
UI library; views/figures.py draws the results.
"""
from seqmatch_engine.diagnostics.features import REDUCERS, Embedding
from seqmatch_engine.diagnostics.gradients import coupling_index, gradient_similarity

__all__ = ["REDUCERS", "Embedding", "coupling_index", "gradient_similarity"]
