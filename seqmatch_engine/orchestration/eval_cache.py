"""Accuracies of evaluation jobs already run, filed by everything that determines them.

On the CPU an evaluation job gives the same bits wherever and whenever it runs on one machine
(jobs.py), so its accuracy is a function of its recipe: the data (by the digest of the validation and
test tensors it is measured on), the net, the training settings, the curriculum (by content), the seed
tags, the split, where it started, the code that prepares the data and trains and tests the net, and
the torch build and kernels. A job met again is read, not trained:

- the random-real baseline, shared by the static MTT and SeqMatch runs of a comparison;
- in a study, SeqMatch's first subset at IPC 2k is static MTT's set at IPC k (same recipe, same seed),
  so its selection candidates and its "S_1 alone" control were scored by the MTT run already.

(On CUDA, without deterministic algorithms, a job's bits can vary between runs: the file then holds one
valid measurement of it.) Files: <experts root>/evaluations/<key>.json = {"recipe": ..., "accuracy": float};
a damaged or mismatching file is measured again and replaced; delete the folder to measure everything again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from seqmatch_engine.maths import native
from seqmatch_engine.maths.experts import code_digest, recipe_key, tensor_digest
from seqmatch_engine.orchestration.jobs import EvalJob, NetState
from seqmatch_engine.storage.files import StorageError, read_json, write_json

TRAINING_SETTINGS = ("epochs", "batch_size", "momentum", "weight_decay", "augment")  # what an EvalJob's result reads
# The code between a job and its accuracy: an edit there measures again.
TRAINING_CODE = ("data/datasets.py", "data/prepare.py", "core/seeding.py", "maths/evaluate.py", "maths/augment.py",
                 "maths/models.py", "maths/matching.py", "orchestration/jobs.py", "maths/native/__init__.py",
                 "maths/native/norm_relu_pool.c")


def code_version() -> str:
    """Digest of TRAINING_CODE and the torch version."""
    return code_digest(TRAINING_CODE)


def _kernels(device: torch.device) -> str:
    """Which kernels train the net: the fused C kernels or torch ops on the CPU, the GPU's model on CUDA."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "native" if native.kernels() is not None else "torch"


def _start_digest(start: NetState | None) -> str | None:
    if start is None:
        return None
    digest = hashlib.sha256(tensor_digest(*(start.tensors[name] for name in sorted(start.tensors))).encode())
    digest.update(start.generator_state.numpy().tobytes())
    return digest.hexdigest()[:16]


def job_recipe(job: EvalJob, data_digest: str) -> dict[str, Any]:
    """What determines the accuracy of `job` (measured on data whose val/test tensors digest to `data_digest`),
    as it reads back from JSON."""
    settings = dataclasses.asdict(job.eval_config)
    device = torch.device(job.device)
    return json.loads(json.dumps({
        "kind": "evaluation job", "data": json.loads(job.data.data_json), "split_seed": job.data.seed,
        "measured_on": data_digest, "spec": dataclasses.asdict(job.spec),
        "training": {k: settings[k] for k in TRAINING_SETTINGS}, "arch": job.arch,
        "stages": [[tensor_digest(s.images), tensor_digest(s.labels), s.lr] for s in job.stages],
        "seed": job.seed, "tag": job.tag, "index": job.index, "split": job.split, "start": _start_digest(job.start),
        "device": device.type, "kernels": _kernels(device), "code": code_version()}))


class EvaluationCache:
    def __init__(self, root: Path):
        self.root = Path(root) / "evaluations"

    def get(self, job: EvalJob, data_digest: str) -> float | None:
        recipe = job_recipe(job, data_digest)
        path = self.root / f"{recipe_key(recipe)}.json"
        try:
            stored = read_json(path) if path.is_file() else None
        except StorageError:
            return None  # damaged: measured again and replaced
        if isinstance(stored, dict) and stored.get("recipe") == recipe and isinstance(stored.get("accuracy"), float):
            return stored["accuracy"]
        return None

    def put(self, job: EvalJob, data_digest: str, accuracy: float) -> None:
        """File the accuracy; a cache that cannot be written (full disk, read-only folder) only costs speed."""
        recipe = job_recipe(job, data_digest)
        path = self.root / f"{recipe_key(recipe)}.json"
        try:
            write_json(path, {"recipe": recipe, "accuracy": float(accuracy)})
        except (OSError, StorageError) as error:
            warnings.warn(f"could not save an evaluation result to {path} ({error}); the run goes on, and the "
                          f"same evaluation will be trained again next time. Free space or make {self.root} "
                          f"writable to keep them", stacklevel=2)
