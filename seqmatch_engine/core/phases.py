"""Words the engine and its readers share as types: text enums, and the kinds of a run's phases."""
from __future__ import annotations

from enum import Enum


class TextEnum(str, Enum):
    """An enum whose members are their text everywhere: in JSON, f-strings and comparisons with strings."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class PhaseKind(TextEnum):
    """What a run is doing in a phase; a phase's name ("experts 2", "distilling S1") is for people, its kind
    for code (progress, ETA, what a view shows)."""

    LOADING = "loading"        # reading and preparing the data
    EXPERTS = "experts"        # training (or reading) expert trajectories
    DISTILLING = "distill"     # learning a subset: outer iterations and their validation selection
    EVALUATING = "evaluate"    # training evaluation nets on the set and the baselines
