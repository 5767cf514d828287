"""The typed contents of a run's diagnostics/ files (G1, G2, G4); diagnostics_store reads and writes them, the
run diagnostics build them from seqmatch_engine.diagnostics' results, the views read them through the query API.
Each record's to_dict gives the JSON its file holds, in the field order it always had."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from seqmatch_engine.storage.records import known_fields

Matrix = list[list[float | None]]   # K x K cosines; None where a group has no gradient (NaN in the maths)


# -- G1: one record per logged outer iteration (g1.jsonl) -----------------------------------------------------
@dataclass(frozen=True)
class G1Record:
    """Gradient similarity at one outer iteration of one stage: the groups (subsets S_1..S_k, or static MTT's
    nominal groups), their image counts, the K x K between-group cosine matrix and each group's mean
    within-class cosine; the start epoch and matching loss of that iteration."""

    stage: int
    iteration: int
    groups: list[str]
    sizes: list[int]
    matrix: Matrix
    within: list[float | None]
    start_epoch: int | None = None
    loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "G1Record":
        return cls(**known_fields(cls, data))


# -- G2: matching error by start epoch of held-out trajectories (g2.json) ---------------------------------------
@dataclass(frozen=True)
class G2Family:
    """L(t) of one family of held-out trajectories (1: stage-1 experts; 2: experts pre-trained on U_1; ...): its
    mean and std over experts and draws per start epoch, each expert's mean, the subset scored at each epoch,
    the run whose subsets made the family (None: this run), and the late-epoch error."""

    start_epochs: list[int]
    mean: list[float]
    std: list[float]
    per_expert: list[list[float]]
    family: int
    subset: list[int]
    source_run: str | None
    late_error: float


@dataclass(frozen=True)
class G2Result:
    """A run's G2: one family per kind of held-out trajectory, with what it was computed from."""

    method: str
    run: str
    ipc: int
    families: list[G2Family]
    lrs: list[float]
    experts: int
    draws: int
    expert_epochs: int
    syn_steps: int
    held_out_key: str
    version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "G2Result":
        known = known_fields(cls, data)
        return cls(**{**known, "families": [G2Family(**known_fields(G2Family, f)) for f in known["families"]]})


# -- G4: accuracy on easy and hard test images (g4.json) -------------------------------------------------------
@dataclass(frozen=True)
class NetAccuracies:
    """Per-net accuracies (fractions) on one part of the test set, their mean and sample std (None when a net
    had no image of that part)."""

    mean: float | None
    std: float | None
    values: list[float | None]


@dataclass(frozen=True)
class SetAccuracies:
    """One training set's nets on all, easy and hard test images."""

    all: NetAccuracies
    easy: NetAccuracies
    hard: NetAccuracies


@dataclass(frozen=True)
class G4Result:
    """A run's G4: the hardness split of the test set (threshold, counts, each image's hardness) and the accuracy
    of nets trained on its set ("synthetic") and on random real images ("random_real") on each part."""

    method: str
    run: str
    ipc: int
    threshold: float
    easy_count: int
    hard_count: int
    experts: int
    nets: int
    eval_epochs: int
    sets: dict[str, SetAccuracies]
    hardness: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "G4Result":
        known = known_fields(cls, data)
        sets = {name: SetAccuracies(**{part: NetAccuracies(**known_fields(NetAccuracies, found[part]))
                                       for part in ("all", "easy", "hard")})
                for name, found in known["sets"].items()}
        return cls(**{**known, "sets": sets})
