"""The engine on CUDA: the same maths as on the CPU, reproducible, and run folders that read back on a CPU.

Skipped where CUDA is absent. `SEQMATCH_TEST_DEVICE=cpu` runs the same checks on the CPU (the GPU check's
--dry-run does, so that this file cannot rot on machines without a GPU). Imports nothing from the app, and
runs without pytest too (scripts/gpu_check.py calls the test functions itself where pytest is missing).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from configs import tiny_run_config
from reference import reference_unroll, relative_error

from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.maths.augment import DSA_OPERATIONS, apply_augmentation
from seqmatch_engine.maths.matching import ConvNetStudent, draw_unroll_plan, matching_loss
from seqmatch_engine.maths.models import ConvNetSpec, init_convnet_params

DEVICE = os.environ.get("SEQMATCH_TEST_DEVICE", "cuda")
AVAILABLE = DEVICE == "cpu" or torch.cuda.is_available()
SPEC = ConvNetSpec(3, (16, 16), 4, width=8, depth=2)

try:
    import pytest

    pytestmark = pytest.mark.skipif(not AVAILABLE, reason="needs CUDA (SEQMATCH_TEST_DEVICE=cpu runs it on the CPU)")
except ImportError:  # the GPU machine's Python has no pytest: scripts/gpu_check.py runs these functions itself
    pytest = None


def problem(dtype: torch.dtype, steps: int = 3, seed: int = 0):
    """A tiny matching problem on the CPU: start, target (P,), images (n, C, H, W), labels (n,), a DSA plan."""
    g = make_generator(seed, "cuda-check")
    start = init_convnet_params(SPEC, g).to(dtype)
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=dtype)
    images = torch.randn((8, 3, 16, 16), generator=g, dtype=dtype)
    labels = torch.arange(4).repeat_interleave(2)
    plan = draw_unroll_plan(g, 8, 4, steps, (16, 16), DSA_OPERATIONS)
    return start, target, images, labels, plan


def step(device: str, dtype: torch.dtype, mode: str):
    """Loss and its gradients w.r.t. pixels and lr of one outer iteration, computed on `device`, back on the CPU."""
    start, target, images, labels, plan = problem(dtype)
    x = images.to(device).requires_grad_(True)
    lr = torch.tensor(0.01, dtype=dtype, device=device, requires_grad=True)
    loss = matching_loss(ConvNetStudent(SPEC, mode), start.to(device), target.to(device), x, labels.to(device), lr, plan)
    loss.backward()
    return float(loss), x.grad.cpu(), lr.grad.cpu()


def test_the_matching_step_equals_the_cpu_one_in_both_memory_modes():
    for mode in ("unrolled", "recompute"):
        loss, gx, glr = step(DEVICE, torch.float64, mode)
        cpu_loss, cpu_gx, cpu_glr = step("cpu", torch.float64, mode)
        assert abs(loss - cpu_loss) <= 1e-10 * abs(cpu_loss), (mode, loss, cpu_loss)
        assert relative_error(gx, cpu_gx) <= 1e-10 and relative_error(glr, cpu_glr) <= 1e-10, mode
        # fp32: as close as the plain fp32 reference itself comes to fp64
        ref64 = reference_gradients(torch.float64)
        ref32 = reference_gradients(torch.float32)
        tolerance = 10 * max(relative_error(ref32[1].double(), ref64[1]), 1e-6)
        _, gx32, _ = step(DEVICE, torch.float32, mode)
        assert relative_error(gx32.double(), ref64[1]) <= tolerance, (mode, relative_error(gx32.double(), ref64[1]))


def reference_gradients(dtype: torch.dtype):
    """The plain reference (layered net, torch.func, full graph) on the CPU: loss, dL/dx, dL/dlr."""
    start, target, images, labels, plan = problem(dtype)
    x = images.clone().requires_grad_(True)
    lr = torch.tensor(0.01, dtype=dtype, requires_grad=True)
    final = reference_unroll(SPEC, start, x, labels, lr, [s.indices for s in plan],
                             [lambda im, d=s.augmentation: apply_augmentation(im, d) for s in plan])
    loss = (final - target).pow(2).sum() / (start - target).pow(2).sum()
    loss.backward()
    return float(loss), x.grad, lr.grad


def test_pixel_gradients_match_finite_differences():
    start, target, images, labels, plan = problem(torch.float64, steps=2)
    student = ConvNetStudent(SPEC, "unrolled")
    lr = torch.tensor(0.01, dtype=torch.float64, device=DEVICE)
    on = {name: t.to(DEVICE) for name, t in (("start", start), ("target", target), ("labels", labels))}

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return matching_loss(student, on["start"], on["target"], x, on["labels"], lr, plan)

    x = images.to(DEVICE).requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of(x), x)
    direction = torch.randn(images.shape, generator=make_generator(1, "fd"), dtype=torch.float64).to(DEVICE)
    eps = 1e-5
    plus, minus = (loss_of(images.to(DEVICE) + sign * eps * direction).detach() for sign in (1, -1))
    numeric = (plus - minus) / (2 * eps)  # the unroll needs autograd inside, so no torch.no_grad here
    analytic = float((grad * direction).sum())
    assert abs(float(numeric) - analytic) <= 1e-6 * max(abs(analytic), 1e-8), (float(numeric), analytic)


def deterministic(fn):
    """`fn()` twice with deterministic algorithms on; both results, and the setting restored."""
    was = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        return fn(), fn()
    finally:
        torch.use_deterministic_algorithms(was)


def test_experts_and_evaluation_are_reproducible_and_generators_stay_on_the_cpu(tmp_path=None):
    from seqmatch_engine.maths.evaluate import curriculum_from_subsets
    from seqmatch_engine.orchestration.context import RunContext

    tmp_path = Path(tmp_path or tempfile.mkdtemp())
    config = tiny_run_config("cuda", 0, (1,)).to_dict()
    config["device"] = DEVICE
    from seqmatch_engine.core.config import RunConfig

    ctx = RunContext(RunConfig.from_dict(config), tmp_path)
    assert ctx.device.type == torch.device(DEVICE).type and ctx.data.train_images.device.type == ctx.device.type
    assert make_generator(0, "any").device.type == "cpu"  # draws are made on the CPU, then moved

    def experts():
        job = ctx.stage1_jobs(ctx.stage1_recipe(), 1)[0]
        from seqmatch_engine.orchestration.jobs import train_expert

        return train_expert(job)

    first, second = deterministic(experts)
    assert first.device.type == "cpu" and torch.equal(first, second)  # trajectories are saved from the CPU

    x, y = ctx.data.train_images, ctx.data.train_labels
    stages = curriculum_from_subsets([(x[:10], y[:10]), (x[10:20], y[10:20])], [0.01, 0.02])
    roots = (tmp_path / f"evaluations-{i}" for i in range(4))  # a fresh evaluation cache per call: each trains

    def straight():
        return RunContext(ctx.config, next(roots), ctx.data).evaluate(stages, "convnet", 2, "test", "cuda-check").values

    def partway():  # U_1 once, then U_2 from there (how selection scores candidates)
        fresh = RunContext(ctx.config, next(roots), ctx.data)
        starts = fresh.train_partway(stages[:1], "convnet", 2, "cuda-check")
        return fresh.evaluate(stages[1:], "convnet", 2, "test", "cuda-check", starts=starts).values

    a, b = deterministic(straight)
    assert a == b
    c, d = deterministic(partway)
    assert c == d == a


def test_a_small_seqmatch_run_end_to_end_reads_back_on_the_cpu(tmp_path=None):
    from seqmatch_engine.core.config import RunConfig
    from seqmatch_engine.orchestration.driver import Distiller
    from seqmatch_engine.storage.records import RunState
    from seqmatch_engine.storage.runs import RunFolder

    tmp_path = Path(tmp_path or tempfile.mkdtemp())
    raw = tiny_run_config("cuda-e2e", 0, (1, 1), select_every=2).to_dict()
    raw["device"] = DEVICE
    run = RunFolder.create(tmp_path / "runs", RunConfig.from_dict(raw))
    result = Distiller(run, tmp_path / "experts").run()
    assert result is not None and run.status().state == RunState.DONE
    # everything saved is readable on a CPU-only machine: tensors come back on the CPU
    reread = RunFolder(run.path)
    subsets = reread.subsets()
    assert len(subsets) == 2 and all(s.images.device.type == "cpu" and torch.isfinite(s.images).all() for s in subsets)
    assert reread.eval().accuracy()["mean"] > 0 and reread.snapshots() and reread.transform().mean.device.type == "cpu"
    assert reread.snapshot_images(*reread.snapshots()[-1]).device.type == "cpu"
