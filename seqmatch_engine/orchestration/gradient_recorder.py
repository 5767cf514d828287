"""The driver's hook for G1: decides when to record and appends records to the run folder."""
from __future__ import annotations

from pathlib import Path

import torch

from seqmatch_engine.diagnostics.gradients import g1_values, stage_groups
from seqmatch_engine.storage.diagnostic_records import G1Record
from seqmatch_engine.storage.diagnostics_store import append_g1, truncate_g1


class GradientRecorder:
    """Appends a G1 record every `every` outer iterations of one stage (every = 0: never).

    `subset_labels` are the labels (n_j,) of the student set's parts [S_1, ..., S_k] in the
    order of the recorded gradients; `nominal_groups` is given for static MTT only. Records
    of this stage past `start_iteration` (left by a killed run) are dropped on creation.
    """

    def __init__(self, run_dir: Path, stage: int, subset_labels: list[torch.Tensor], nominal_groups: int | None,
                 every: int, start_iteration: int = 0):
        self.run_dir, self.stage, self.every = Path(run_dir), stage, every
        parts = [labels.cpu() for labels in subset_labels]
        self.labels = torch.cat(parts)
        self.groups, self.names = stage_groups(parts, nominal_groups)
        truncate_g1(self.run_dir, stage, start_iteration)

    def due(self, iteration: int) -> bool:
        """Whether outer iteration `iteration` (1-based, as in metrics.jsonl) is recorded."""
        return self.every > 0 and iteration % self.every == 0

    def record(self, iteration: int, grads: torch.Tensor | None, start_epoch: int, loss: float) -> None:
        """Append the record of gradients (n, C, H, W); does nothing when grads is None (not recorded)."""
        if grads is None:
            return
        matrix, within = g1_values(grads, self.labels, self.groups, len(self.names))
        sizes = [int((self.groups == k).sum()) for k in range(len(self.names))]
        append_g1(self.run_dir, G1Record(self.stage, iteration, self.names, sizes, matrix, within, start_epoch, loss))
