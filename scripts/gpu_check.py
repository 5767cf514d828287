"""The prepared GPU check (scripts/gpu_check.sh): CUDA tests, the step and its memory on CUDA, a paper-shaped run.

    python scripts/gpu_check.py [OUT] [--dry-run]      (PYTHONPATH=. from the repository root)

Each part runs in its own child process with its own time limit, so one slow part cannot starve the rest;
results go to OUT/gpu_check.json and a readable OUT/gpu_check.txt. --dry-run runs the same parts on the CPU
at toy sizes (what CI exercises, so that the script cannot rot). Needs torch, safetensors, scipy, tqdm,
pillow; never gradio, plotly, umap or pytest (the CUDA tests run without pytest when it is missing).
"""
from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# part -> (time limit in seconds on the GPU, in a dry run)
LIMITS = {"tests": (150, 300), "step": (150, 240), "memory": (100, 240), "run": (180, 300)}
PAPER = {"paper": (128, 3, 32, 10, 10), "cifar10-ipc50": (128, 3, 32, 50, 30)}  # width, ch, side, ipc, N
TOY = {"paper": (8, 3, 16, 2, 2), "cifar10-ipc50": (8, 3, 16, 3, 3)}


def device_and_shapes(dry: bool):
    return ("cpu", TOY) if dry else ("cuda", PAPER)


# -- parts (each runs in a child: python scripts/gpu_check.py --part NAME OUT [--dry-run]) ------------------------
def part_tests(out: Path, dry: bool) -> dict:
    """tests/test_cuda.py: through pytest when installed, else each test function called directly."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    if dry:
        env["SEQMATCH_TEST_DEVICE"] = "cpu"
    try:
        import pytest  # noqa: F401
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                              cwd=REPO, env=env, capture_output=True, text=True)
        return {"runner": "pytest", "passed": proc.returncode == 0, "output": proc.stdout[-3000:] + proc.stderr[-2000:]}
    except ImportError:
        pass
    os.environ.update(env)
    import importlib

    module = importlib.import_module("test_cuda")
    results = {}
    for name in sorted(n for n in dir(module) if n.startswith("test_")):
        try:
            getattr(module, name)()
            results[name] = "passed"
        except Exception as error:  # report every test, not just the first failure
            results[name] = f"FAILED: {type(error).__name__}: {error}"
    return {"runner": "direct", "passed": all(v == "passed" for v in results.values()), "tests": results}


def _setup(shape, device: str, steps: int):
    import torch

    from seqmatch_engine.core.seeding import make_generator
    from seqmatch_engine.maths.augment import DSA_OPERATIONS
    from seqmatch_engine.maths.matching import draw_unroll_plan
    from seqmatch_engine.maths.models import ConvNetSpec, init_convnet_params

    width, channels, side, ipc, _ = shape
    spec = ConvNetSpec(channels, (side, side), 10, width=width, depth=3)
    g = make_generator(0, "gpu-check")
    start = init_convnet_params(spec, g)
    target = start + 0.01 * torch.randn(start.shape, generator=g)
    images = torch.randn((10 * ipc, channels, side, side), generator=g)
    labels = torch.arange(10).repeat_interleave(ipc)
    plan = draw_unroll_plan(g, len(images), len(images), steps, (side, side), DSA_OPERATIONS)
    return spec, start.to(device), target.to(device), images.to(device), labels.to(device), plan


def _one_iteration(impl: str, spec, start, target, images, labels, plan) -> float:
    import torch

    from seqmatch_engine.interfaces.bench_reference import plain_matching_loss
    from seqmatch_engine.maths.matching import ConvNetStudent, matching_loss

    x = images.clone().requires_grad_(True)
    lr = torch.tensor(0.01, device=images.device, requires_grad=True)
    if impl == "reference":
        loss = plain_matching_loss(spec, start, target, x, labels, lr, plan)
    else:
        loss = matching_loss(ConvNetStudent(spec, impl), start, target, x, labels, lr, plan)
    loss.backward(inputs=[x, lr])
    return float(loss)


def _timed(device: str, fn) -> tuple[float, int]:
    """(seconds, peak bytes) of fn() on `device` (peak: torch.cuda.max_memory_allocated; 0 on the CPU)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, torch.cuda.max_memory_allocated() if device == "cuda" else 0


def part_step(out: Path, dry: bool) -> dict:
    """Seconds per outer iteration (median of 3 after a warm-up) of ours (unrolled, recompute) vs the reference."""
    device, shapes = device_and_shapes(dry)
    result = {}
    for name, shape in shapes.items():
        setup = _setup(shape, device, shape[4])
        result[name] = {}
        for impl in ("reference", "unrolled", "recompute"):
            _one_iteration(impl, *setup)  # warm-up (cuDNN autotuning, allocator)
            runs = [_timed(device, lambda impl=impl, setup=setup: _one_iteration(impl, *setup)) for _ in range(3)]
            result[name][impl] = {"seconds": statistics.median(t for t, _ in runs),
                                  "peak_bytes": max(m for _, m in runs)}
        reference = result[name]["reference"]["seconds"]
        for impl in ("unrolled", "recompute"):
            result[name][impl]["speedup_vs_reference"] = reference / result[name][impl]["seconds"]
    return result


def part_memory(out: Path, dry: bool) -> dict:
    """Peak GPU memory and time of one outer iteration, unrolled vs recompute, at the IPC 50 shape, N 30/50/80."""
    device, shapes = device_and_shapes(dry)
    result = {}
    for steps in ((2, 3) if dry else (30, 50, 80)):
        setup = _setup(shapes["cifar10-ipc50"], device, steps)
        result[steps] = {}
        for impl in ("unrolled", "recompute"):
            try:
                seconds, peak = _timed(device, lambda impl=impl, setup=setup: _one_iteration(impl, *setup))
                result[steps][impl] = {"seconds": seconds, "peak_bytes": peak}
            except RuntimeError as error:  # out of memory is a result too
                result[steps][impl] = {"error": str(error).splitlines()[0][:200]}
    return result


def write_cifar10_format(root: Path, per_class: int, test_per_class: int) -> None:
    """Fashion-MNIST (bundled) padded to 32x32 and repeated over 3 channels, in cifar-10-batches-py's layout."""
    import numpy as np

    from seqmatch_engine.data.datasets import load_dataset

    source = load_dataset("fashion-mnist-small")
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)

    def batch(images, labels, per: int) -> dict:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per] for c in range(10)])
        padded = np.pad(images[keep, 0], ((0, 0), (2, 2), (2, 2)))
        data = np.repeat(padded[:, None], 3, axis=1).reshape(len(keep), -1).astype(np.uint8)
        return {"data": data, "labels": labels[keep].tolist()}

    train = batch(source.train_images.numpy(), source.train_labels.numpy(), per_class)
    chunks = np.array_split(np.arange(len(train["labels"])), 5)
    for index, rows in enumerate(chunks, 1):
        part = {"data": train["data"][rows], "labels": [train["labels"][i] for i in rows]}
        (base / f"data_batch_{index}").write_bytes(pickle.dumps(part))
    (base / "test_batch").write_bytes(pickle.dumps(batch(source.test_images.numpy(), source.test_labels.numpy(),
                                                         test_per_class)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def part_run(out: Path, dry: bool) -> dict:
    """A short paper-shaped SeqMatch run (ConvNet-128 on 32x32x3, K = 2) on CIFAR-10-format data written here."""
    from seqmatch_engine.core.config import RunConfig
    from seqmatch_engine.orchestration.driver import Distiller
    from seqmatch_engine.storage.records import IterationRecord
    from seqmatch_engine.storage.runs import RunFolder

    device, _ = device_and_shapes(dry)
    home = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    per_class = 20 if dry else 1000
    write_cifar10_format(home / "data", per_class, 10 if dry else 100)
    config = RunConfig.from_dict({
        "name": "gpu-check", "device": device,
        "data": {"dataset": "cifar10", "root": str(home / "data"), "val_per_class": 5 if dry else 50},
        "model": {"width": 8 if dry else 128},
        "experts": {"num_experts": 2, "epochs": 2 if dry else 4, "stage_epochs": 2 if dry else 3, "batch_size": 256},
        "distill": {"subsets": [{"ipc": 1 if dry else 5, "interval": [0, 2 if dry else 3], "iterations": 3 if dry else 20,
                                 "lr_init": 0.01}] * 2,
                    "syn_steps": 2 if dry else 20, "expert_epochs": 1, "lr_img": 100.0, "lr_lr": 1e-7 if dry else 1e-5,
                    "select_every": 0},
        "eval": {"epochs": 2 if dry else 100, "num_nets": 1 if dry else 2},
    })
    run = RunFolder.create(home / "runs", config)
    started = time.perf_counter()
    result = Distiller(run, home / "experts").run()
    wall = time.perf_counter() - started
    seconds = run.status().phase_seconds
    iterations = [r.seconds for r in run.metrics() if isinstance(r, IterationRecord)]
    e = config.experts
    return {"wall_seconds": wall, "phase_seconds": seconds,
            "seconds_per_iteration": statistics.median(iterations) if iterations else None,
            "seconds_per_expert_epoch": seconds.get("experts 1", 0) / (e.num_experts * e.epochs),
            "train_images": 10 * (per_class - config.data.val_per_class),
            "accuracy": result["synthetic"]["convnet"]["mean"] if result else None,
            "warnings": [m.text for m in run.status().messages if m.level == "warning"]}


PARTS = {"tests": part_tests, "step": part_step, "memory": part_memory, "run": part_run}


def environment() -> dict:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def report(results: dict) -> str:
    lines = [f"GPU check ({'dry run on the CPU' if results['dry_run'] else 'CUDA'}): {json.dumps(results['env'])}"]
    for name, outcome in results["parts"].items():
        lines.append(f"\n## {name}: {outcome['status']} in {outcome['seconds']:.0f} s")
        if outcome["status"] != "ok":
            lines.append(outcome.get("error", ""))
            continue
        data = outcome["result"]
        if name == "tests":
            lines.append(f"runner {data['runner']}: {'all passed' if data['passed'] else 'FAILURES'}")
            lines += [f"  {k}: {v}" for k, v in data.get("tests", {}).items()]
            if data["runner"] == "pytest":
                lines.append(data["output"].strip().splitlines()[-1] if data["output"].strip() else "")
        elif name == "step":
            for shape, impls in data.items():
                for impl, v in impls.items():
                    speedup = f", {v['speedup_vs_reference']:.2f}x the reference" if "speedup_vs_reference" in v else ""
                    lines.append(f"  {shape:14s} {impl:10s} {v['seconds']:.3f} s/iteration, "
                                 f"peak {v['peak_bytes'] / 2**30:.2f} GiB{speedup}")
        elif name == "memory":
            for steps, impls in data.items():
                lines.append(f"  N {steps}: " + ", ".join(
                    f"{impl} {v['peak_bytes'] / 2**30:.2f} GiB in {v['seconds']:.2f} s" if "error" not in v
                    else f"{impl} failed: {v['error']}" for impl, v in impls.items()))
        elif name == "run":
            per_iteration = data["seconds_per_iteration"]
            lines.append(f"  {per_iteration if per_iteration is None else round(per_iteration, 3)} s per outer "
                         f"iteration, {data['seconds_per_expert_epoch']:.2f} s per expert epoch ({data['train_images']} "
                         f"images), run {data['wall_seconds']:.0f} s, accuracy {data['accuracy']}")
            lines += [f"  warning: {text}" for text in data.get("warnings", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    args = [a for a in argv if a != "--dry-run"]
    if args and args[0] == "--part":  # a child: run one part, print its JSON
        print("RESULT " + json.dumps(PARTS[args[1]](Path(args[2]), dry), default=str))
        return 0
    out = Path(args[0] if args else os.environ.get("OUT", "gpu-check-results"))
    out.mkdir(parents=True, exist_ok=True)
    results = {"dry_run": dry, "env": environment(), "parts": {}}
    for name in PARTS:
        limit = LIMITS[name][1 if dry else 0]
        started = time.perf_counter()
        print(f"[{name}] (limit {limit} s)", flush=True)
        try:
            proc = subprocess.run([sys.executable, __file__, "--part", name, str(out), *(["--dry-run"] if dry else [])],
                                  cwd=REPO, capture_output=True, text=True, timeout=limit)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode == 0 and lines:
                outcome = {"status": "ok", "result": json.loads(lines[-1][7:])}
            else:
                outcome = {"status": "failed", "error": (proc.stderr or proc.stdout)[-3000:]}
        except subprocess.TimeoutExpired:
            outcome = {"status": "timed out", "error": f"stopped after {limit} s"}
        outcome["seconds"] = time.perf_counter() - started
        results["parts"][name] = outcome
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
        (out / "gpu_check.txt").write_text(report(results))
        print(report({**results, "parts": {name: outcome}}).split("\n", 1)[1], flush=True)
    ok = all(p["status"] == "ok" for p in results["parts"].values()) and \
        results["parts"]["tests"].get("result", {}).get("passed", False)
    print(f"results: {out / 'gpu_check.txt'} ({'all parts ok' if ok else 'SOME PARTS FAILED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
