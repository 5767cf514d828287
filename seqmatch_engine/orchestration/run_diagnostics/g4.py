"""G4: easy and hard test images by when held-out experts first get them right (diagnostics/hardness.py), and
the accuracy of the run's set and of random real images on each; stored as diagnostics/g4.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.diagnostics.hardness import (
    expert_correctness,
    hardness,
    masked_accuracy,
    split_easy_hard,
    summarise,
)
from seqmatch_engine.maths.evaluate import curriculum_from_subsets, predict, random_real_curriculum, train_curriculum
from seqmatch_engine.maths.models import build_eval_net
from seqmatch_engine.orchestration.jobs import eval_net_generator
from seqmatch_engine.orchestration.run_diagnostics.base import (
    Diagnostic,
    RunDiagnostics,
    number,
    readable,
)
from seqmatch_engine.storage.diagnostic_records import G4Result, NetAccuracies, SetAccuracies
from seqmatch_engine.storage.diagnostics_store import read_g4, write_g4
from seqmatch_engine.storage.runs import RunFolder

SETS = ("synthetic", "random_real")


def compute(diagnostics: RunDiagnostics, progress: ProgressFn | None = None,
            partner: RunFolder | None = None) -> G4Result:
    """Hardness split of the test set and easy/hard accuracy of the run's set and the random-real baseline.

    The nets are the first `options.nets` nets of the run's final evaluation (same seed tags, same protocol
    config.eval), so their overall accuracy equals those in eval.json.
    """
    d = diagnostics
    cfg, data, spec = d.config, d.data, d.spec
    correct = expert_correctness(d.held_out_experts(), data.test_images, data.test_labels, spec)
    h = hardness(correct)
    easy, hard, threshold = split_easy_hard(h)
    curriculum = curriculum_from_subsets([(s.images.to(d.device), s.labels.to(d.device)) for s in d.subsets],
                                         [s.lr for s in d.subsets])
    jobs = [("synthetic", curriculum), ("random_real", random_real_curriculum(data, cfg))]
    nets, total, done = d.options.nets, 2 * d.options.nets, 0
    labels = data.test_labels.cpu()
    sets: dict[str, SetAccuracies] = {}
    for name, stages in jobs:
        scores: dict[str, list[float | None]] = {"all": [], "easy": [], "hard": []}
        for i in range(nets):
            generator = eval_net_generator(cfg.seed, name, "convnet", i)  # the nets of the run's evaluation
            net = build_eval_net("convnet", spec, generator, d.device)
            train_curriculum(net, stages, cfg.eval, generator)
            predictions = predict(net, data.test_images)
            for part, mask in (("all", torch.ones_like(easy)), ("easy", easy), ("hard", hard)):
                scores[part].append(masked_accuracy(predictions, labels, mask))
            done += 1
            if progress:
                progress(done, total)
        sets[name] = SetAccuracies(**{part: NetAccuracies(*summarise(values)) for part, values in scores.items()})
    result = G4Result(cfg.method, d.run.id, cfg.ipc, threshold, int(easy.sum()), int(hard.sum()), len(correct), nets,
                      cfg.eval.epochs, sets, [round(float(v), 4) for v in h])
    write_g4(d.run.path, result)
    return result


def lacks(run_dir: Path, reducer: str | None, partner: bool) -> bool:
    """Absent or unreadable (then computed again)."""
    return readable(read_g4, run_dir) is None


def summary(run_dir: Path) -> dict[str, Any]:
    found = readable(read_g4, run_dir)
    return {f"{part}_accuracy_{name}": getattr(found.sets[name], part).mean if found else None
            for name in SETS for part in ("easy", "hard")}


def summary_lines(values: dict[str, Any]) -> list[str]:
    return [f"{part}-image accuracy (G4)     {number(values[f'{part}_accuracy_synthetic'], True)} synthetic, "
            f"{number(values[f'{part}_accuracy_random_real'], True)} random real" for part in ("hard", "easy")]


DIAGNOSTIC = Diagnostic("g4", "G4 easy/hard", compute, lacks, summary, summary_lines)
