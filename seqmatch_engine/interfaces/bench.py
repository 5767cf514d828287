"""`python -m seqmatch_engine bench [--quick]`: the engine's speed and memory, side by side.

How it measures (printed with the results):
- Every time and peak-memory figure of an implementation comes from a fresh child process that
  builds the problem, runs one untimed warm-up, then timed repetitions. Children of the
  implementations being compared run interleaved (A B A B ...), and medians are reported, so
  that load from other jobs on a shared machine hits all sides alike. Fresh processes keep
  allocator state apart: the engine tunes glibc's allocator (memory.py), the plain reference
  runs as an ordinary Python process would.
- Peak memory on the CPU is the growth of the child's resident anonymous memory (from
  /proc/self/statm, sampled every 2 ms by a thread) over its first full outer iteration; on
  CUDA it would be torch.cuda.max_memory_allocated (tracemalloc does not see torch's
  allocations, and ru_maxrss also moves when a busy kernel evicts library code pages).

The plain reference is written here without any trick: the functional ConvNet from a flat
parameter vector (F.conv2d with bias, F.group_norm, relu, avg_pool2d), the full unrolled graph
through torch.autograd.grad(create_graph=True), fp32. The plain expert loop is an nn.Sequential
trained with torch.optim.SGD.
"""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seqmatch_engine.core.config import RunConfig, apply_overrides, load_preset
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.interfaces.bench_children import Out, gib, interleaved_children, machine_lines, matmul_peak
from seqmatch_engine.interfaces.bench_eval import child_task, section_evaluation, section_selection
from seqmatch_engine.interfaces.bench_precision import section_fashion, section_precision
from seqmatch_engine.interfaces.bench_reference import (
    PROBLEMS,
    Problem,
    median,
    plain_convnet,
    plain_matching_loss,
    relative_error,
    table,
)
from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.maths.augment import DSA_OPERATIONS, augment
from seqmatch_engine.maths.experts import train_trajectory
from seqmatch_engine.maths.matching import (
    ConvNetStudent,
    draw_minibatches,
    draw_unroll_plan,
    matching_loss,
)
from seqmatch_engine.maths.memory import estimate_bytes, tune_cpu_allocator
from seqmatch_engine.maths.models import ConvNetSpec, init_convnet_params
from seqmatch_engine.maths.parallel import parallel_workers, run_in_parallel
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.storage.records import RunState

SECTIONS = ["matching", "flops", "fashion", "precision", "memory", "experts", "evaluation", "selection", "first-image"]


# -- one outer iteration ---------------------------------------------------------------------------------
@dataclass
class StepSetup:
    problem: Problem
    start: torch.Tensor
    target: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    plan: list

    @classmethod
    def build(cls, problem: Problem, steps: int | None = None, seed: int = 0) -> "StepSetup":
        spec = problem.spec
        g = make_generator(seed, "bench", problem.name)
        start = init_convnet_params(spec, g)
        target = start + 0.01 * torch.randn(start.shape, generator=g)
        images = torch.randn((problem.num_images, spec.channels, *spec.image_size), generator=g)
        labels = torch.arange(spec.num_classes).repeat_interleave(problem.ipc)
        plan = draw_unroll_plan(g, problem.num_images, problem.num_images, steps or problem.syn_steps,
                                spec.image_size, DSA_OPERATIONS)
        return cls(problem, start, target, images, labels, plan)

    def run(self, impl: str) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One outer iteration (loss and its backward) of `impl`: loss, dL/dx, dL/dlr."""
        x = self.images.clone().requires_grad_(True)
        lr = torch.tensor(0.01, requires_grad=True)
        if impl.startswith("reference"):
            loss = plain_matching_loss(self.problem.spec, self.start, self.target, x, self.labels, lr, self.plan)
        else:  # "unrolled", "recompute" or "recompute:bare" (no convolution replayed)
            mode, _, option = impl.partition(":")
            student = ConvNetStudent(self.problem.spec, mode, replay=option != "bare")
            loss = matching_loss(student, self.start, self.target, x, self.labels, lr, self.plan)
        loss.backward(inputs=[x, lr])
        return float(loss.detach()), x.grad, lr.grad


# -- expert training -------------------------------------------------------------------------------------
def expert_data(num_images: int = 1024, seed: int = 0) -> tuple[ConvNetSpec, torch.Tensor, torch.Tensor]:
    spec = PROBLEMS["small"].spec
    g = make_generator(seed, "bench-experts")
    images = torch.randn((num_images, spec.channels, *spec.image_size), generator=g)
    labels = torch.arange(num_images) % spec.num_classes
    return spec, images, labels


def plain_expert_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                       labels: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
    """One epoch of an ordinary training loop (same minibatches and augmentation as the experts)."""
    steps = -(-len(images) // batch_size)
    for rows in draw_minibatches(generator, len(images), batch_size, steps):
        x = augment(images[rows], generator, DSA_OPERATIONS)
        loss = F.cross_entropy(net(x), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# -- child processes ---------------------------------------------------------------------------------------
def anonymous_rss() -> int:
    """Resident anonymous memory of this process (resident - file-backed/shared pages), in bytes.

    Unlike ru_maxrss it does not move when the kernel evicts or re-reads library code pages
    (which happens on a busy machine), so its growth is the memory the computation holds.
    """
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakSampler:
    """Highest `anonymous_rss()` seen while the block runs, sampled every `interval` seconds.

    With the engine's allocator setting freed memory stays resident, so the end value is the peak;
    the plain reference returns memory as it goes, hence the sampling."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, False

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, anonymous_rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakSampler":
        self.start = anonymous_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, anonymous_rss())


def child_main(task: dict[str, Any]) -> dict[str, Any]:
    """Entry point of a measuring child (see module docstring). Prints one JSON line."""
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    if task.get("tune"):
        tune_cpu_allocator()
    kind = task["kind"]
    times: list[float] = []
    result: dict[str, Any] = {}
    if kind == "matching":
        setup = StepSetup.build(PROBLEMS[task["problem"]], steps=task.get("steps"))
        if task.get("light_warmup"):  # load kernels with a 1-step iteration, measure the peak on the first full one
            StepSetup.build(PROBLEMS[task["problem"]], steps=1).run(task["impl"])
        with PeakSampler() as sampler:
            t0 = time.perf_counter()
            loss, gx, glr = setup.run(task["impl"])
            first = time.perf_counter() - t0
        result["peak_bytes"] = sampler.peak - sampler.start
        if task.get("save"):
            torch.save({"loss": loss, "gx": gx, "glr": glr}, task["save"])
        for _ in range(task.get("reps", 1)):
            t0 = time.perf_counter()
            setup.run(task["impl"])
            times.append(time.perf_counter() - t0)
        result["first_seconds"] = first
    elif kind == "experts":

        spec, images, labels = expert_data(task.get("images", 1024))
        start = init_convnet_params(spec, make_generator(0, "bench-start"))
        one = lambda k: train_trajectory(spec, images, labels, start, 1, 0.01, 256, True,  # noqa: E731
                                         make_generator(0, "e", k))
        experts = 1
        if task["impl"] == "plain":
            net = plain_convnet(spec)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
            epoch = lambda: plain_expert_epoch(net, optimizer, images, labels, 256, make_generator(0, "e"))  # noqa: E731
        elif task["impl"] == "parallel":
            experts = parallel_workers("cpu")
            epoch = lambda: list(run_in_parallel(one, list(range(experts)), experts))  # noqa: E731
        else:
            epoch = lambda: one(0)  # noqa: E731
        epoch()
        for _ in range(task.get("reps", 1)):
            t0 = time.perf_counter()
            epoch()
            times.append(time.perf_counter() - t0)
        result["images"] = len(images) * experts
        result["experts"] = experts
    elif kind in ("selection", "nets"):

        result = child_task(task)
        times = result.pop("times")
    else:
        raise ValueError(kind)
    result["times"] = times
    result["rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def count_flops(problem: Problem, impl: str, steps: int = 1) -> int:
    """FLOPs of one outer iteration of `impl` with `steps` student steps (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode  # deferred: only the flops section counts

    setup = StepSetup.build(problem, steps=steps)
    with FlopCounterMode(display=False) as counter:
        setup.run(impl)
    return int(counter.get_total_flops())


# -- sections ---------------------------------------------------------------------------------------------
def section_matching(problems: list[str], rounds: int, reps: int, threads: int | None,
                     out: Out, progress: Out) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rows = []
    # the reference with the engine's allocator setting too: the plain one page-faults its memory in on every
    # step, a cost that moves a lot between machines and days; the gap to this one is the step itself
    impls = ["reference", "reference+allocator", "unrolled", "recompute"]
    for name in problems:
        with tempfile.TemporaryDirectory() as tmp:
            tasks = {impl: {"kind": "matching", "problem": name, "impl": impl, "reps": reps, "threads": threads,
                            "tune": impl != "reference", "save": f"{tmp}/{impl}.pt"} for impl in impls}
            progress(f"[matching step, {name}]")
            runs = interleaved_children(tasks, rounds, progress)
            grads = {impl: torch.load(f"{tmp}/{impl}.pt") for impl in impls if Path(f"{tmp}/{impl}.pt").exists()}
        med, peak = {}, {}
        for impl in impls:
            errors = [r["error"] for r in runs[impl] if "error" in r]
            if errors:
                out(f"  {name} {impl}: failed: {errors[0]}")
            med[impl] = median([t for r in runs[impl] for t in r["times"]])
            peak[impl] = max((r.get("peak_bytes", 0) for r in runs[impl]), default=0)
        ref = grads.get("reference")
        for impl in impls:
            diff = ""
            if ref is not None and impl in grads and impl != "reference":
                g = grads[impl]
                diff = (f"loss {abs(g['loss'] - ref['loss']) / abs(ref['loss']):.0e}, "
                        f"dx {relative_error(g['gx'], ref['gx']):.0e}, dlr {relative_error(g['glr'], ref['glr']):.0e}")
            rows.append([name, impl, f"{med[impl]:.3f} s", f"{med['reference'] / med[impl]:.2f}x",
                         f"{med['reference+allocator'] / med[impl]:.2f}x", gib(peak[impl]),
                         f"{peak['reference'] / max(peak[impl], 1):.1f}x", diff])
        results[name] = {"seconds": med, "peak_bytes": peak, "runs": runs}
    out(table(rows, ["config", "implementation", "time / outer it.", "speed-up", "vs ref+allocator", "peak memory",
                      "less memory",
                      "fp32 difference vs reference"]))
    return results


def section_flops(problems: list[str], seconds: dict[str, float], threads: int | None, out: Out) -> dict[str, Any]:
    peak = matmul_peak(threads)
    rows, result = [], {"matmul_gflops": peak}
    for name in problems:
        problem = PROBLEMS[name]
        flops = count_flops(problem, "unrolled", steps=1) * problem.syn_steps
        achieved = flops / seconds[name] / 1e9
        rows.append([name, f"{flops / 1e9:.1f} GFLOP", f"{seconds[name]:.3f} s", f"{achieved:.1f} GFLOP/s",
                     f"{100 * achieved / peak:.0f} %"])
        result[name] = {"flops": flops, "gflops": achieved}
    out(f"matmul peak measured now: {peak:.1f} GFLOP/s (fp32 2048x2048, best of 5, {torch.get_num_threads()} threads)")
    out(table(rows, ["config", "FLOPs / outer it.", "time (unrolled)", "achieved", "of matmul peak"]))
    out("FLOPs: torch.utils.flop_counter on one student step of our unrolled matching step, times syn_steps "
        "(every step has the same batch); convolutions and matmuls only, elementwise work is not counted.")
    return result


def section_memory(steps_list: list[int], rounds: int, reps: int, threads: int | None, out: Out,
                   progress: Out) -> dict[str, Any]:
    problem = PROBLEMS["small"]
    rows, result = [], {}
    progress("[memory vs syn_steps, small config]")
    batch = problem.num_images
    for steps in steps_list:
        progress(f"  syn_steps {steps}:")
        impls = {"unrolled": "unrolled", "recompute": "recompute", "bare": "recompute:bare"}
        tasks = {name: {"kind": "matching", "problem": "small", "impl": impl, "steps": steps, "reps": reps,
                        "threads": threads, "tune": True, "light_warmup": True} for name, impl in impls.items()}
        runs = interleaved_children(tasks, rounds, progress)
        peaks = {m: median([r.get("peak_bytes", 0) for r in rs]) for m, rs in runs.items()}
        times = {m: median([t for r in rs for t in r.get("times", [])]) for m, rs in runs.items()}
        est = {"unrolled": estimate_bytes(problem.spec, batch, steps, "unrolled", batch),
               "recompute": estimate_bytes(problem.spec, batch, steps, "recompute", batch),
               "bare": estimate_bytes(problem.spec, batch, steps, "recompute", batch, replay=False)}
        for name in ("recompute", "bare"):
            rows.append([str(steps), name, gib(peaks[name]), gib(est[name]), gib(peaks["unrolled"]),
                         gib(est["unrolled"]), f"{peaks[name] / max(peaks['unrolled'], 1):.2f}",
                         f"{times[name] / times['unrolled']:.2f}x"])
        result[steps] = {"peak": peaks, "estimate": est, "seconds": times}
    out(table(rows, ["syn_steps", "memory-bounded", "peak", "(estimate)", "unrolled peak", "(estimate)",
                      "memory ratio", "time ratio"]))
    out(f"ConvNet w32, 28x28x1, IPC 10; peak = growth of resident anonymous memory over one outer iteration in a "
        f"fresh child (after a 1-step warm-up); ratios to unrolled: medians of {rounds} interleaved children x "
        f"{reps} iterations each. recompute = distill.memory_mode recompute (rebuilds every step, replaying its "
        f"recorded convolutions); bare = recompute with nothing recorded (the least memory, what it falls back to "
        f"when even the recordings do not fit).")
    return result


def section_experts(rounds: int, reps: int, threads: int | None, out: Out, progress: Out) -> dict[str, Any]:
    progress("[expert training]")
    tasks = {impl: {"kind": "experts", "impl": impl, "reps": reps, "threads": threads, "tune": impl != "plain"}
             for impl in ("plain", "ours", "parallel")}
    runs = interleaved_children(tasks, rounds, progress)
    rate = {}
    for impl, rs in runs.items():
        errors = [r["error"] for r in rs if "error" in r]
        if errors:
            out(f"  {impl}: failed: {errors[0]}")
        rate[impl] = rs[0].get("images", 0) / median([t for r in rs for t in r["times"]]) if rs else 0.0
    out(table([["plain nn.Module loop", f"{rate['plain']:.0f} images/s", "1.00x"],
                ["ours, one expert (train_trajectory)", f"{rate['ours']:.0f} images/s",
                 f"{rate['ours'] / rate['plain']:.2f}x"],
                [f"ours, {runs['parallel'][0].get('experts', '?')} experts at once (how the engine trains them)",
                 f"{rate['parallel']:.0f} images/s", f"{rate['parallel'] / rate['plain']:.2f}x"]],
               ["expert training (w32, 28x28x1, batch 256, DSA)", "throughput", "speed-up"]))
    return rate


def section_first_image(quick: bool, out: Out, progress: Out) -> dict[str, Any]:
    overrides = ["device=cpu"] + (["experts.num_experts=1"] if quick else [])
    config = RunConfig.from_dict(apply_overrides(load_preset("cpu-demo"), overrides))
    with tempfile.TemporaryDirectory() as home:
        home = Path(home)
        progress("[first image] pre-training the cpu-demo experts ...")
        t0 = time.perf_counter()
        RunContext(config, home / "experts").stage1_experts()
        pretrain = time.perf_counter() - t0
        manager = JobManager(home)
        submitted = time.time()
        run_id = manager.submit(config)
        deadline = time.time() + 300
        live = manager.live(run_id)
        while (live is None or live.first_image_s is None) and time.time() < deadline and live.state != RunState.FAILED:
            time.sleep(0.02)
            live = manager.live(run_id)
        seen = time.time()
        manager.stop(run_id)
        while manager.live(run_id).state.active and time.time() < deadline + 120:
            time.sleep(0.1)
    first = live.first_image_s if live is not None else None
    text = ("none within 300 s" if first is None
            else f"{first:.2f} s after the job started ({seen - submitted:.2f} s after submit)")
    out(f"cpu-demo preset{' (1 expert)' if quick else ''}, experts cached: first published image {text}")
    out(f"(experts pre-trained beforehand in {pretrain:.0f} s; JobManager + LiveState.first_image_s, "
        f"temp SEQMATCH home)")
    return {"first_image_s": first, "pretrain_s": pretrain}


# -- the command ------------------------------------------------------------------------------------------
def run_bench(quick: bool = False, threads: int | None = None, sections: list[str] | None = None,
              out: Out = print, progress: Out | None = None) -> dict[str, Any]:
    progress = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    if threads:
        torch.set_num_threads(threads)
    sections = sections or SECTIONS
    rounds, reps = (1, 1) if quick else (2, 2)
    problems = ["small", "paper"]
    out(f"SeqMatch Studio benchmark ({'quick' if quick else 'full'})")
    for line in machine_lines():
        out(line)
    out("method: every figure below is a median over repetitions after a warm-up; the implementations compared run")
    out("        in fresh child processes, interleaved (A B A B ...), so that machine load hits all alike and")
    out("        allocator state cannot leak between them; peak memory = growth of the child's resident anonymous")
    out("        memory over its first full outer iteration (/proc/self/statm sampled every 2 ms).")
    report: dict[str, Any] = {"quick": quick}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if "matching" in sections:
        out("\n## Matching step: one outer iteration, IPC 10, syn_steps 10, batch 100 (reference = plain, no tricks)")
        report["matching"] = section_matching(problems, rounds, reps, threads, out, progress)
        seconds = {p: report["matching"][p]["seconds"]["unrolled"] for p in problems}
        out("configs: small = ConvNet w32 on 28x28x1, paper = ConvNet w128 on 32x32x3. 'reference+allocator' is the "
            "plain reference with the engine's allocator setting: the rest of the gap is the step itself.")
    if "flops" in sections:
        out("\n## Achieved FLOP/s of our matching step")
        if not seconds:
            seconds = {p: _time_in_process(PROBLEMS[p]) for p in problems}
        report["flops"] = section_flops(problems, seconds, threads, out)
    if "fashion" in sections:
        out("\n## The outer iteration at the CPU presets' shapes (fashion-ipc*, ConvNet w32 on 28x28x1, syn_steps 10)")
        report["fashion"] = section_fashion(quick, rounds + 1, reps, threads, out, progress)
    if "precision" in sections:
        out("\n## bf16: what it costs in exactness and buys in time")
        report["precision"] = section_precision(quick, rounds + 1, reps, threads, out, progress)
    if "memory" in sections:
        out("\n## Peak memory vs syn_steps: unrolled (default) and recompute (memory-bounded) modes")
        report["memory"] = section_memory([10, 30, 50], rounds + 1, reps + 1, threads, out, progress)
    if "experts" in sections:
        out("\n## Expert training throughput")
        report["experts"] = section_experts(rounds + 1, reps + 1, threads, out, progress)
    if "evaluation" in sections:
        out("\n## Evaluation throughput (synthetic-set training, 1 minibatch per epoch, DSA)")
        report["evaluation"] = section_evaluation(2 if quick else 3, out)
    if "selection" in sections:
        out("\n## Selection and evaluation nets: where a study cell's time goes")
        report["selection"] = section_selection(quick, rounds + 1, reps, threads, out, progress)
    if "first-image" in sections:
        out("\n## Time to the first live image")
        report["first_image"] = section_first_image(quick, out, progress)
    out(f"\nbench took {time.perf_counter() - started:.0f} s; command: python -m seqmatch_engine bench"
        f"{' --quick' if quick else ''}{f' --threads {threads}' if threads else ''}")
    return report


def _time_in_process(problem: Problem) -> float:
    tune_cpu_allocator()
    setup = StepSetup.build(problem)
    setup.run("unrolled")
    t0 = time.perf_counter()
    setup.run("unrolled")
    return time.perf_counter() - t0


