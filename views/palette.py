"""Colours shared by every tab: one per method (the same in every chart), one per subset in the grids."""
from __future__ import annotations

METHOD_COLOURS = {"mtt": "#0d9488", "seqmatch": "#ea580c", "random_real": "#94a3b8"}
METHOD_NAMES = {"mtt": "static MTT", "seqmatch": "SeqMatch", "random_real": "random real"}
# Subsets S1, S2, ... in the image grids and the per-subset curves (none of them a method's colour).
STAGE_COLOURS = ["#2563eb", "#db2777", "#7c3aed", "#65a30d", "#0891b2", "#a16207"]
# Other series (several runs of one method, pairs of groups in G1).
SERIES_COLOURS = ["#2563eb", "#db2777", "#7c3aed", "#65a30d", "#0891b2", "#a16207"]
FAMILY_DASHES = ["solid", "dash", "dot", "dashdot"]  # G2: families of held-out trajectories


def method_colour(method: str | None, fallback: int = 0) -> str:
    """The colour of a method ("mtt", "seqmatch", "random_real"), or a series colour for anything else."""
    return METHOD_COLOURS.get(method or "", SERIES_COLOURS[fallback % len(SERIES_COLOURS)])
