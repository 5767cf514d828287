"""The benchmark's evaluation sections: what a study cell spends most of its time on.

A study cell (one seed, static MTT and SeqMatch at one IPC) trains several thousand evaluation-net
epochs: validation selection (`eval.select_nets` nets per candidate), the final test nets, the
random-real baseline and the controls. Two ways to make that cheaper are measured here side by side,
each in fresh child processes run alternately (see bench.py):

- selection: every candidate of stage k trained through its whole curriculum U_1..U_k (before), or
  the nets trained through U_1..U_{k-1} once per stage and each candidate from there (the engine
  now; the same bits, which the section checks);
- batched nets: a set's evaluation nets as separate nets, `parallel_workers` at a time on single
  threads (the engine), or as one model whose convolutions are grouped by net (the issue's
  suggestion), on all threads.
"""
from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seqmatch_engine.core.config import EvalConfig, RunConfig, apply_overrides, load_preset
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.interfaces.bench_children import Out, interleaved_children
from seqmatch_engine.interfaces.bench_reference import PROBLEMS, median, table
from seqmatch_engine.maths.augment import augment
from seqmatch_engine.maths.evaluate import CurriculumStage, decay_at_midpoint, random_real_subset, train_curriculum
from seqmatch_engine.maths.matching import draw_minibatches
from seqmatch_engine.maths.memory import tune_cpu_allocator
from seqmatch_engine.maths.models import ConvNet, ConvNetSpec, NormReLUPool, init_convnet_params, unflatten
from seqmatch_engine.maths.parallel import parallel_workers, run_in_parallel
from seqmatch_engine.orchestration.context import RunContext

CANDIDATES = 5    # candidates scored per stage in the fashion-ipc20 preset: the initial images + every 25 of 100
SELECT_NETS = 4   # eval.select_nets of the study presets
IPC = 10          # images per class of each subset (fashion-ipc20: 10 + 10)


# -- selection: whole curricula vs shared earlier stages ------------------------------------------------------
def selection_child(impl: str, epochs: int, reps: int) -> dict[str, Any]:
    """Times of scoring CANDIDATES stage-2 candidates after one S_1, `impl` "whole" or "shared"."""

    raw = apply_overrides(load_preset("fashion-ipc20"), ["device=cpu", f"eval.epochs={epochs}",
                                                         f"eval.select_nets={SELECT_NETS}"])
    config = RunConfig.from_dict(raw)
    scratch = tempfile.TemporaryDirectory(prefix="bench-selection-")
    data = RunContext(config, Path(scratch.name) / "data").data
    rounds = itertools.count()

    def fresh() -> RunContext:  # an empty evaluation cache every round: each round trains its nets
        return RunContext(config, Path(scratch.name) / f"round-{next(rounds)}", data)

    def subset(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_real_subset(data.train_images, data.train_labels, data.num_classes, IPC,
                                  make_generator(0, "bench-selection", k))

    s1, candidates = subset(0), [subset(1 + c) for c in range(CANDIDATES)]
    u1 = CurriculumStage(*s1, 0.03)
    union = [CurriculumStage(torch.cat([s1[0], c[0]]), torch.cat([s1[1], c[1]]), 0.03) for c in candidates]

    def one_stage_round() -> list[float]:
        ctx = fresh()
        if impl == "whole":
            return [ctx.evaluate([u1, u], "convnet", SELECT_NETS, "val", "select-1").mean for u in union]
        starts = ctx.train_partway([u1], "convnet", SELECT_NETS, "select-1")
        return [ctx.evaluate([u], "convnet", SELECT_NETS, "val", "select-1", starts=starts).mean for u in union]

    accuracies = one_stage_round()  # warm-up, and the scores compared between the implementations
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        one_stage_round()
        times.append(time.perf_counter() - t0)
    scratch.cleanup()
    return {"times": times, "accuracies": accuracies, "workers": parallel_workers("cpu")}


# -- batched nets: one grouped model vs separate nets ---------------------------------------------------------
def batched_forward(pieces: list[torch.Tensor], x: torch.Tensor, spec: ConvNetSpec, nets: int) -> torch.Tensor:
    """`nets` ConvNets in one model: x (B, nets*C, H, W) -> logits (B, nets, classes).

    pieces: the parameters of spec.param_shapes() stacked over nets (conv weights (nets*width, cin, 3, 3),
    norm affines (nets*width,), classifier (nets, classes, features) and (nets, classes)); conv biases are
    left out as in the engine's fast path (instance norm cancels them)."""
    h = x
    for d in range(spec.depth):
        w, gamma, beta = pieces[3 * d: 3 * d + 3]
        h = NormReLUPool.apply(F.conv2d(h, w, None, padding=spec.padding(d), groups=nets), gamma, beta)
    features = h.reshape(h.shape[0], nets, -1)
    return torch.einsum("bnf,ncf->bnc", features, pieces[-2]) + pieces[-1]


def stacked_params(spec: ConvNetSpec, flats: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters of `flats` (one flat vector per net) in batched_forward's layout, as leaves."""
    per_net = [unflatten(flat, spec) for flat in flats]
    pieces = []
    for d in range(spec.depth):
        w, _, gamma, beta = (4 * d + i for i in range(4))
        pieces += [torch.cat([p[w] for p in per_net]), torch.cat([p[gamma] for p in per_net]),
                   torch.cat([p[beta] for p in per_net])]
    pieces += [torch.stack([p[-2] for p in per_net]), torch.stack([p[-1] for p in per_net])]
    return [p.detach().clone().requires_grad_(True) for p in pieces]


def train_batched(spec: ConvNetSpec, flats: list[torch.Tensor], stage: CurriculumStage, config: EvalConfig,
                  generators: list[torch.Generator]) -> list[torch.Tensor]:
    """One curriculum stage for len(flats) nets at once (each its own minibatch order and augmentations)."""
    nets = len(flats)
    pieces = stacked_params(spec, flats)
    optimizer = torch.optim.SGD(pieces, lr=stage.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    for epoch in range(config.epochs):
        decay_at_midpoint(optimizer, stage.lr, epoch, config.epochs)
        steps = -(-len(stage.images) // config.batch_size)
        orders = [draw_minibatches(g, len(stage.images), config.batch_size, steps) for g in generators]
        for rows in zip(*orders):
            x = torch.cat([augment(stage.images[r], g) for r, g in zip(rows, generators)], dim=1)
            logits = batched_forward(pieces, x, spec, nets)
            labels = torch.stack([stage.labels[r] for r in rows], dim=1)
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / len(rows[0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return pieces


def nets_child(impl: str, epochs: int, reps: int) -> dict[str, Any]:
    """Times of training SELECT_NETS evaluation nets on a 2*IPC-per-class set, `impl` "separate" or "batched"."""
    spec = ConvNetSpec(1, (28, 28), 10, width=32, depth=3)
    g = make_generator(0, "bench-nets")
    images = torch.randn(spec.num_classes * 2 * IPC, 1, 28, 28, generator=g)
    stage = CurriculumStage(images, torch.arange(spec.num_classes).repeat_interleave(2 * IPC), 0.01)
    config = EvalConfig(epochs=epochs)
    flats = [init_convnet_params(spec, make_generator(0, "bench-net", i)) for i in range(SELECT_NETS)]
    workers = parallel_workers("cpu")

    def one(i: int) -> None:
        train_curriculum(ConvNet(spec, flats[i]), [stage], config, make_generator(0, "bench-eval", i))

    def train_all() -> None:
        if impl == "separate":
            list(run_in_parallel(one, list(range(SELECT_NETS)), workers))
        else:
            train_batched(spec, flats, stage, config, [make_generator(0, "bench-eval", i) for i in range(SELECT_NETS)])

    train_all()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        train_all()
        times.append(time.perf_counter() - t0)
    return {"times": times, "workers": workers}


def section_evaluation(reps: int, out: Out) -> dict[str, Any]:
    tune_cpu_allocator()
    rows, result = [], {}
    for name in ("small", "paper"):
        problem = PROBLEMS[name]
        spec = problem.spec
        g = make_generator(0, "bench-eval")
        images = torch.randn((problem.num_images, spec.channels, *spec.image_size), generator=g)
        labels = torch.arange(spec.num_classes).repeat_interleave(problem.ipc)
        epochs = 20 if name == "small" else 4
        config = EvalConfig(epochs=epochs)
        stages = [CurriculumStage(images, labels, 0.01)]
        times = []
        for r in range(reps + 1):
            net = ConvNet(spec, init_convnet_params(spec, g))
            t0 = time.perf_counter()
            train_curriculum(net, stages, config, make_generator(0, "eval", r))
            if r:
                times.append(time.perf_counter() - t0)
        rate = epochs / median(times)
        rows.append([name, f"{problem.num_images} images", f"{rate:.1f} epochs/s"])
        result[name] = rate
    out(table(rows, ["evaluation (train a fresh ConvNet on the set)", "set", "throughput"]))
    return result


def child_task(task: dict[str, Any]) -> dict[str, Any]:
    kinds = {"selection": selection_child, "nets": nets_child}
    return kinds[task["kind"]](task["impl"], task["epochs"], task.get("reps", 1))


def section_selection(quick: bool, rounds: int, reps: int, threads: int | None, out: Out,
                      progress: Out) -> dict[str, Any]:
    """Both comparisons, each in interleaved fresh children."""

    epochs = 4 if quick else 10
    progress("[selection and evaluation nets]")
    tasks = {impl: {"kind": "selection", "impl": impl, "epochs": epochs, "reps": reps, "threads": threads}
             for impl in ("whole", "shared")}
    tasks.update({impl: {"kind": "nets", "impl": impl, "epochs": epochs, "reps": reps, "threads": threads}
                  for impl in ("separate", "batched")})
    runs = interleaved_children(tasks, rounds, progress)
    errors = [f"{name}: {r['error']}" for name, rs in runs.items() for r in rs if "error" in r]
    for error in errors:
        out(f"  failed: {error}")
    seconds = {name: median([t for r in rs for t in r.get("times", [])]) for name, rs in runs.items()}
    scores = [r.get("accuracies") for r in runs["whole"] + runs["shared"]]
    same = bool(scores) and scores[0] is not None and all(score == scores[0] for score in scores)
    workers = runs["separate"][0].get("workers", "?")
    out(table([
        ["selection, stage 2 (before): every candidate through U_1, U_2", f"{seconds['whole']:.2f} s", "1.00x"],
        ["selection, stage 2 (engine): U_1 once, each candidate from there", f"{seconds['shared']:.2f} s",
         f"{seconds['whole'] / seconds['shared']:.2f}x"],
        [f"{SELECT_NETS} evaluation nets (engine): separate, {workers} at a time", f"{seconds['separate']:.2f} s",
         "1.00x"],
        [f"{SELECT_NETS} evaluation nets: one model, convs grouped by net", f"{seconds['batched']:.2f} s",
         f"{seconds['separate'] / seconds['batched']:.2f}x"]],
        [f"evaluation work, {epochs} epochs per stage (a study uses 300: times scale with epochs)", "time",
         "speed-up"]))
    out(f"selection: {CANDIDATES} candidates of S_2 (10 real images per class each) after one S_1 of 10 per class, "
        f"{SELECT_NETS} nets each, validation on the fashion-ipc20 data; identical accuracies both ways: "
        f"{'yes' if same else 'NO'}. Evaluation nets: ConvNet w32 on 200 images (IPC 20), batch 256, DSA.")
    return {"epochs": epochs, "seconds": seconds, "identical_selection": same}
