"""Colours shared by every tab: one per method (the same in every chart), one per subset in the grids."""
from __future__ import annotations

from seqmatch_engine.core.config import METHODS, method_label

# The four methods' colours, then colours for objectives added later (in config.METHODS order), the baselines grey.
_CHOSEN = {"mtt": "#0d9488", "seqmatch": "#ea580c", "datm": "#4f46e5", "seqmatch-datm": "#be123c"}
_MORE = ["#0369a1", "#a21caf", "#4d7c0f", "#b45309"]
METHOD_COLOURS = {**_CHOSEN, **{m: _MORE[i % len(_MORE)] for i, m in enumerate(m for m in METHODS if m not in _CHOSEN)},
                  "random_real": "#94a3b8", "random_real_soft": "#64748b"}
METHOD_NAMES = {**{m: method_label(m) for m in METHODS},
                "random_real": "random real", "random_real_soft": "random real, soft labels"}
# Subsets S1, S2, ... in the image grids and the per-subset curves, and other series (several runs of one method,
# pairs of groups in G1): none of them a method's colour.
SERIES_COLOURS = ["#2563eb", "#db2777", "#7c3aed", "#65a30d", "#0891b2", "#a16207"]
FAMILY_DASHES = ["solid", "dash", "dot", "dashdot"]  # G2: families of held-out trajectories


def method_colour(method: str | None, fallback: int = 0) -> str:
    """The colour of a method ("mtt", "seqmatch", "random_real"), or a series colour for anything else."""
    return METHOD_COLOURS.get(method or "", SERIES_COLOURS[fallback % len(SERIES_COLOURS)])
