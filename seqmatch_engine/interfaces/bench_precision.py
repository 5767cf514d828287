"""`bench --only fashion precision`: the outer iteration at the CPU presets' shapes, and what bf16 would buy.

fashion: one outer iteration at the shapes the `fashion-ipc*` presets and studies distil (ConvNet w32 d3 on
28x28x1, syn_steps 10): SeqMatch's second subset at IPC 20 (10 learned + 10 frozen per class, batch 100),
static MTT at IPC 20 (batch 200), and both at IPC 50. Each path runs in fresh children interleaved with the
others, so load hits all alike; GFLOP/s are the step's convolution and matmul FLOPs (torch.utils.flop_counter)
over its median time, beside the fp32 matmul peak measured in the same run.
- fused fp32: the engine's path (fused norm kernels, im2col first conv, chunked batches);
- plain fp32: the functional ConvNet through autograd (F.conv2d, F.group_norm), the exact reference;
- plain fp32, channels-last convs: the same with every convolution run on NHWC copies;
- plain bf16 convs: the same with convolution inputs and weights in bf16 (accumulation, norms, the loss fp32).

precision: what bf16 costs in exactness (cosine between its and fp64's pixel gradients of one outer step, beside
fp32's) and what it buys in time for the unroll, expert training and evaluation nets (autocast), fp32 beside it.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.interfaces.bench_children import Out, interleaved_children, matmul_peak
from seqmatch_engine.interfaces.bench_reference import median, plain_convnet, table
from seqmatch_engine.maths.augment import DSA_OPERATIONS, augment
from seqmatch_engine.maths.matching import ConvNetStudent, draw_minibatches, draw_unroll_plan, matching_loss
from seqmatch_engine.maths.memory import tune_cpu_allocator
from seqmatch_engine.maths.models import ConvNetSpec, init_convnet_params, unflatten

FASHION = ConvNetSpec(1, (28, 28), 10, width=32, depth=3)
# (name, images per class in the student's data, images per class in a minibatch)
SHAPES = {"ipc20-stage2": (20, 10), "ipc20-static": (20, 20), "ipc50-stage2": (50, 25), "ipc50-static": (50, 50)}
PATHS = ("fused fp32", "plain fp32", "plain fp32 channels-last", "plain bf16 convs")


def plain_forward(flat: torch.Tensor, x: torch.Tensor, spec: ConvNetSpec, conv_dtype: torch.dtype = torch.float32,
                  channels_last: bool = False) -> torch.Tensor:
    """The ConvNet from a flat parameter vector through autograd; convolutions in `conv_dtype` (inputs and weights
    cast, output back to the input's dtype) and optionally on NHWC copies."""
    params = unflatten(flat, spec)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for d in range(spec.depth):
        w, b, gamma, beta = params[4 * d: 4 * d + 4]
        z = F.conv2d(x.to(conv_dtype).contiguous(memory_format=layout), w.to(conv_dtype).contiguous(memory_format=layout),
                     None, padding=spec.padding(d)).to(x.dtype).contiguous()
        x = F.avg_pool2d(F.relu(F.group_norm(z + b.view(1, -1, 1, 1), spec.width, gamma, beta)), 2)
    return F.linear(x.flatten(1), params[-2], params[-1])


def _forward(path: str) -> Callable:
    if path == "fused fp32":

        return ConvNetStudent(FASHION, "unrolled")
    dtype = torch.bfloat16 if "bf16" in path else torch.float32
    return lambda flat, x: plain_forward(flat, x, FASHION, dtype, "channels-last" in path)


def _problem(shape: str, dtype: torch.dtype = torch.float32):
    """start, target, images, labels and the unroll plan of one outer iteration at `shape`."""
    ipc, per_batch = SHAPES[shape]
    g = make_generator(0, "bench-fashion", shape)
    start = init_convnet_params(FASHION, g)
    target = start + 0.01 * torch.randn(start.shape, generator=g)
    images = torch.randn((10 * ipc, 1, 28, 28), generator=g)
    labels = torch.arange(10).repeat_interleave(ipc)
    plan = draw_unroll_plan(g, len(images), 10 * per_batch, 10, (28, 28), DSA_OPERATIONS)
    return start.to(dtype), target.to(dtype), images.to(dtype), labels, plan


def outer_step(shape: str, path: str, dtype: torch.dtype = torch.float32) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One outer iteration: the loss and the gradients of the pixels and the lr."""
    start, target, images, labels, plan = _problem(shape, dtype)
    x = images.clone().requires_grad_(True)
    lr = torch.tensor(0.01, dtype=dtype, requires_grad=True)
    forward = _forward(path) if dtype == torch.float32 else (lambda flat, x: plain_forward(flat, x, FASHION, dtype))
    loss = matching_loss(forward, start, target, x, labels, lr, plan)
    loss.backward(inputs=[x, lr])
    return float(loss.detach()), x.grad.detach(), lr.grad.detach()


def step_flops(shape: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode  # deferred: only the fashion section counts

    with FlopCounterMode(display=False) as counter:
        outer_step(shape, "plain fp32")
    return int(counter.get_total_flops())


def _timed(fn: Callable[[], Any], reps: int) -> list[float]:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _expert_epoch(autocast: bool) -> Callable[[], None]:
    """One epoch of plain expert training (1,024 images, batch 256, DSA), optionally under bf16 autocast."""

    g = make_generator(0, "bench-precision-experts")
    images, labels = torch.randn((1024, 1, 28, 28), generator=g), torch.arange(1024) % 10
    net = plain_convnet(FASHION)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def epoch() -> None:
        for rows in draw_minibatches(g, len(images), 256, 4):
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(net(augment(images[rows], g, DSA_OPERATIONS)), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return epoch


def _eval_epochs(autocast: bool, epochs: int = 20) -> Callable[[], None]:
    """`epochs` epochs of an evaluation net on a 200-image synthetic set (one minibatch per epoch)."""

    g = make_generator(0, "bench-precision-eval")
    images, labels = torch.randn((200, 1, 28, 28), generator=g), torch.arange(10).repeat_interleave(20)
    net = plain_convnet(FASHION)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train() -> None:
        for _ in range(epochs):
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(net(augment(images, g, DSA_OPERATIONS)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return train


def child_task(task: dict[str, Any]) -> dict[str, Any]:
    """A measuring child: `fashion` (one path at one shape) or `training` (experts or evaluation, fp32 or bf16)."""
    tune_cpu_allocator()
    if task["kind"] == "fashion":
        return {"times": _timed(lambda: outer_step(task["shape"], task["path"]), task["reps"])}
    make = _expert_epoch if task["what"] == "experts" else _eval_epochs
    return {"times": _timed(make(task["bf16"]), task["reps"])}


def _medians(runs: dict[str, list[dict]], out: Out) -> dict[str, float]:
    for name, results in runs.items():
        for failed in (r["error"] for r in results if "error" in r):
            out(f"  {name}: failed: {failed}")
    return {name: median([t for r in results for t in r.get("times", [])]) for name, results in runs.items()}


def section_fashion(quick: bool, rounds: int, reps: int, threads: int | None, out: Out,
                    progress: Out) -> dict[str, Any]:
    shapes = ["ipc20-stage2", "ipc20-static"] if quick else list(SHAPES)
    peak = matmul_peak(threads)
    rows, result = [], {"matmul_gflops": peak}
    for shape in shapes:
        progress(f"[fashion shapes, {shape}]")
        tasks = {path: {"kind": "fashion", "shape": shape, "path": path, "reps": reps, "threads": threads,
                        "entry": "seqmatch_engine.interfaces.bench_precision:child_task"} for path in PATHS}
        seconds = _medians(interleaved_children(tasks, rounds, progress), out)
        flops = step_flops(shape)
        for path in PATHS:
            achieved = flops / seconds[path] / 1e9
            rows.append([shape, path, f"{seconds[path]:.3f} s", f"{seconds['fused fp32'] / seconds[path]:.2f}x",
                         f"{achieved:.1f} GFLOP/s", f"{100 * achieved / peak:.0f} %"])
        result[shape] = {"seconds": seconds, "flops": flops}
    out(f"matmul peak measured now: {peak:.1f} GFLOP/s (fp32 2048x2048); torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}")
    out(table(rows, ["shape", "path", "time / outer it.", "vs fused fp32", "achieved", "of matmul peak"]))
    out("shapes: ipc20-stage2 = SeqMatch's S2 at IPC 20 (200 images, batch 100); ipc20-static = static MTT at IPC 20 "
        "(batch 200); ipc50-* likewise with 500 images. FLOPs: convolutions and matmuls of the plain path "
        "(torch.utils.flop_counter), the same work for every path.")
    return result


def gradient_agreement(shape: str = "ipc20-stage2") -> dict[str, float]:
    """Cosine between the pixel gradients of one outer step in fp32 (fused) and in bf16 convs, and those of fp64
    (plain), plus the relative error of dL/dlr."""
    _, gx64, glr64 = outer_step(shape, "plain fp32", torch.float64)
    found = {}
    for path in ("fused fp32", "plain bf16 convs"):
        _, gx, glr = outer_step(shape, path)
        cosine = F.cosine_similarity(gx.double().flatten(), gx64.flatten(), dim=0)
        found[path] = {"cosine": float(cosine), "lr_error": float((glr.double() - glr64).abs() / glr64.abs())}
    return found


def section_precision(quick: bool, rounds: int, reps: int, threads: int | None, out: Out,
                      progress: Out) -> dict[str, Any]:
    progress("[bf16: gradient agreement with fp64]")
    agreement = gradient_agreement()
    rows = [[path, f"{a['cosine']:.6f}", f"{a['lr_error']:.1e}"] for path, a in agreement.items()]
    out(table(rows, ["path (ipc20-stage2, one outer step)", "cosine of dL/dx with fp64", "dL/dlr relative error"]))
    result: dict[str, Any] = {"agreement": agreement}
    for what, label in (("experts", "expert training, 1 epoch of 1,024 images"),
                        ("evaluation", "evaluation net, 20 epochs on 200 images")):
        progress(f"[bf16: {what}]")
        tasks = {name: {"kind": "training", "what": what, "bf16": name == "bf16 autocast", "reps": reps,
                        "threads": threads, "entry": "seqmatch_engine.interfaces.bench_precision:child_task"}
                 for name in ("fp32", "bf16 autocast")}
        seconds = _medians(interleaved_children(tasks, rounds, progress), out)
        result[what] = seconds
        out(f"{label}: fp32 {seconds['fp32']:.3f} s, bf16 autocast {seconds['bf16 autocast']:.3f} s "
            f"({seconds['fp32'] / seconds['bf16 autocast']:.2f}x)")
    out(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}: bf16 pays only where the "
        f"CPU computes it natively (AVX-512 BF16 or AMX); elsewhere torch falls back to slow convolutions.")
    return result
