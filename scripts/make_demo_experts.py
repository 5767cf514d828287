"""Regenerate the shipped demo experts (assets/experts/<preset>.safetensors) with the current code.

    .venv/bin/python scripts/make_demo_experts.py [PRESET ...]        (default: cpu-demo cpu-smoke)

Trains each preset's stage-1 experts from scratch on the CPU, as a run there does (never read from a cache
or the old file), and writes them with their recipe (the digest of the expert-training code and the torch
version included) in the file's metadata. tests/test_shipped_experts.py fails when the files no longer match
what the code trains: then run this and commit the files.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from seqmatch_engine.core import paths  # noqa: E402
from seqmatch_engine.core.config import RunConfig, load_preset  # noqa: E402
from seqmatch_engine.orchestration.context import RunContext  # noqa: E402
from seqmatch_engine.orchestration.jobs import train_expert  # noqa: E402
from seqmatch_engine.storage.expert_cache import SHIPPED_PRESETS, write_shipped  # noqa: E402


def train_stage1(preset: str) -> tuple[dict[str, Any], torch.Tensor]:
    """The stage-1 recipe of `preset` and its experts (n, E+1, P), trained on the CPU from scratch."""
    config = RunConfig.from_dict({**load_preset(preset), "device": "cpu"})
    with tempfile.TemporaryDirectory() as scratch:  # an empty cache: nothing is read back
        ctx = RunContext(config, Path(scratch))
        recipe = ctx.stage1_recipe()
        jobs = ctx.stage1_jobs(recipe, config.experts.num_experts)
        try:
            trained = dict(ctx.executor.map(train_expert, jobs))
        finally:
            ctx.executor.close()
    return recipe, torch.stack([trained[i] for i in range(len(jobs))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=list(SHIPPED_PRESETS), help="presets (default: %(default)s)")
    for preset in parser.parse_args().presets:
        started = time.perf_counter()
        recipe, trajectories = train_stage1(preset)
        path = paths.shipped_experts_file(preset)
        write_shipped(path, recipe, trajectories, preset)
        print(f"{path}: {len(trajectories)} experts x {trajectories.shape[1] - 1} epochs x {trajectories.shape[2]} "
              f"parameters, code {recipe['code']}, {path.stat().st_size / 1e6:.1f} MB, trained in "
              f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
