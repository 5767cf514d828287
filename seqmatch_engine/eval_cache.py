"""Accuracies of evaluation jobs already run, filed by everything that determines them.

An evaluation job gives the same bits wherever and whenever it runs on one machine (jobs.py), so its
accuracy is a function of its recipe: the data, the net, the training settings, the curriculum (by
content), the seed tags, the split, where it started, and the code that trains it (TRAINING_CODE and the
torch version, by digest). A job met again is read, not trained:

- the random-real baseline, shared by the static MTT and SeqMatch runs of a comparison;
- in a study, SeqMatch's first subset at IPC 2k is static MTT's set at IPC k (same recipe, same seed),
  so its selection candidates and its "S_1 alone" control were scored by the MTT run already.

Files: <experts root>/evaluations/<key>.json = {"recipe": {...}, "accuracy": float}. A damaged or
mismatching file is measured again and replaced.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .experts import recipe_key, tensor_digest
from .jobs import EvalJob, NetState
from .storage import StorageError, read_json, write_json

TRAINING_SETTINGS = ("epochs", "batch_size", "momentum", "weight_decay", "augment")  # what an EvalJob's result reads
# The code that trains and tests an evaluation net: an edit there (or another torch) measures again.
TRAINING_CODE = ("evaluate.py", "augment.py", "models.py", "matching.py", "jobs.py", "native/norm_relu_pool.c")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    digest = hashlib.sha256(torch.__version__.encode())
    for name in TRAINING_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def _start_digest(start: NetState | None) -> str | None:
    if start is None:
        return None
    digest = hashlib.sha256(tensor_digest(*(start.tensors[name] for name in sorted(start.tensors))).encode())
    digest.update(start.generator_state.numpy().tobytes())
    return digest.hexdigest()[:16]


def job_recipe(job: EvalJob) -> dict[str, Any]:
    """What determines the accuracy of `job`, as it reads back from JSON."""
    settings = dataclasses.asdict(job.eval_config)
    return json.loads(json.dumps({
        "kind": "evaluation job", "data": json.loads(job.data.data_json), "split_seed": job.data.seed,
        "spec": dataclasses.asdict(job.spec), "training": {k: settings[k] for k in TRAINING_SETTINGS},
        "arch": job.arch, "stages": [[tensor_digest(s.images), tensor_digest(s.labels), s.lr] for s in job.stages],
        "seed": job.seed, "tag": job.tag, "index": job.index, "split": job.split,
        "device": torch.device(job.device).type, "start": _start_digest(job.start), "code": code_version()}))


class EvaluationCache:
    def __init__(self, root: Path):
        self.root = Path(root) / "evaluations"

    def get(self, job: EvalJob) -> float | None:
        recipe = job_recipe(job)
        path = self.root / f"{recipe_key(recipe)}.json"
        try:
            stored = read_json(path) if path.is_file() else None
        except StorageError:
            return None  # damaged: measured again and replaced
        if isinstance(stored, dict) and stored.get("recipe") == recipe and isinstance(stored.get("accuracy"), float):
            return stored["accuracy"]
        return None

    def put(self, job: EvalJob, accuracy: float) -> None:
        recipe = job_recipe(job)
        write_json(self.root / f"{recipe_key(recipe)}.json", {"recipe": recipe, "accuracy": float(accuracy)})
