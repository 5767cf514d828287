"""The bits a refactor must keep: fingerprints of preset runs, recorded before and checked after.

    python scripts/golden.py record [--demo]    # write tests/golden/runs.json from the current code
    python scripts/golden.py check [--demo]     # run again and compare, naming what differs

A fingerprint holds, per run, a digest of every learned subset (images, labels, lr), of the per-iteration
losses and selection scores, and the evaluation accuracies. Runs: cpu-smoke (SeqMatch), cpu-smoke as static
MTT with selection at 3 points, cpu-smoke as SeqMatch-DATM (soft labels), and with --demo cpu-demo (minutes).
Bits are only comparable on the same machine and torch build, so the file records both and `check` refuses to
compare across them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from seqmatch_engine.core.config import RunConfig, apply_overrides, as_static, load_preset  # noqa: E402
from seqmatch_engine.core.seeding import machine_signature  # noqa: E402
from seqmatch_engine.orchestration.driver import Distiller  # noqa: E402
from seqmatch_engine.storage.records import IterationRecord, SelectionRecord  # noqa: E402
from seqmatch_engine.storage.runs import RunFolder  # noqa: E402

GOLDEN = REPO / "tests" / "golden" / "runs.json"
RUNS = {
    "cpu-smoke": ("cpu-smoke", [], False),
    "cpu-smoke-static-selected": ("cpu-smoke", ["distill.select_points=3"], True),
    "cpu-smoke-seqmatch-datm": ("cpu-smoke", ["distill.objective=datm"], False),
    "cpu-demo": ("cpu-demo", [], False),
}


def _digest(values) -> str:
    digest = hashlib.sha256()
    for value in values:
        digest.update(value.detach().contiguous().numpy().tobytes() if isinstance(value, torch.Tensor)
                      else json.dumps(value, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def fingerprint(run: RunFolder) -> dict:
    records = run.metrics()
    return {
        "subsets": [_digest([s.images, s.labels, torch.tensor(s.lr)]) for s in run.subsets()],
        "losses": _digest([[r.stage, r.iteration, r.loss, r.lr] for r in records if isinstance(r, IterationRecord)]),
        "selection": [[r.stage, r.iteration, r.val_accuracy] for r in records if isinstance(r, SelectionRecord)],
        "eval": run.eval().sets,
    }


def run_preset(name: str, home: Path) -> dict:
    preset, overrides, static = RUNS[name]
    config = RunConfig.from_dict(apply_overrides(load_preset(preset), ["device=cpu", *overrides]))
    if static:
        config = as_static(config)
    run = RunFolder.create(home / "runs", config)
    Distiller(run, home / "experts").run()
    return fingerprint(run)


def fingerprints(demo: bool) -> dict:
    torch.set_num_threads(2)
    names = [n for n in RUNS if demo or n != "cpu-demo"]
    with tempfile.TemporaryDirectory() as home:
        return {name: run_preset(name, Path(home)) for name in names}


def differences(recorded: dict, found: dict) -> list[str]:
    """What differs between two fingerprint sets (runs present in both), as lines."""
    lines = []
    for name in sorted(set(recorded) & set(found)):
        for key in recorded[name]:
            if recorded[name][key] != found[name].get(key):
                lines.append(f"{name}: {key} differs: recorded {recorded[name][key]}, now {found[name].get(key)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("record", "check"))
    parser.add_argument("--demo", action="store_true", help="also the cpu-demo preset (minutes)")
    args = parser.parse_args()
    found = fingerprints(args.demo)
    if args.action == "record":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({"machine": machine_signature(), "runs": found}, indent=1, sort_keys=True) + "\n")
        print(f"recorded {', '.join(found)} in {GOLDEN}")
        return 0
    recorded = json.loads(GOLDEN.read_text())
    if recorded["machine"] != machine_signature():
        print(f"cannot compare: recorded on {recorded['machine']}, this is {machine_signature()}; record on this "
              f"machine from the code before the change, then check after it")
        return 2
    lines = differences(recorded["runs"], found)
    print("\n".join(lines) if lines else f"same bits: {', '.join(sorted(set(found) & set(recorded['runs'])))}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
