"""The fast paths give the reference's numbers: fused kernels, the recompute mode, chunking,
the automatic memory mode, experts trained in parallel, and the benchmark's plain references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import reference_unroll, relative_error

import seqmatch_engine.maths.matching as matching
from seqmatch_engine.core.config import ConfigError, RunConfig
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.maths.augment import DSA_OPERATIONS, apply_augmentation, augment
from seqmatch_engine.maths.conv_replay import ConvReplay
from seqmatch_engine.maths.experts import train_trajectory
from seqmatch_engine.maths.matching import (
    ConvNetStudent,
    MatchingState,
    draw_minibatches,
    draw_unroll_plan,
    matching_loss,
    normalised_distance,
    outer_step,
)
from seqmatch_engine.maths.memory import BUDGET_FRACTION, choose_memory_mode, estimate_bytes
from seqmatch_engine.maths.models import (
    ConvNetSpec,
    Im2colConv,
    NormReLUPool,
    convnet_forward,
    fast_convnet_forward,
    init_convnet_params,
    pool2,
    unflatten,
    unpool2,
)
from seqmatch_engine.maths.parallel import run_in_parallel, single_threaded_ops

OPS = ("color", "crop", "scale", "rotate", "flip", "cutout")
SPECS = {
    "im2col-even": ConvNetSpec(2, (8, 8), 3, width=4, depth=2),
    "im2col-odd": ConvNetSpec(1, (14, 14), 3, width=5, depth=3),   # 14 -> 7 -> 3: odd pooling
    "onednn": ConvNetSpec(6, (9, 9), 3, width=4, depth=2),         # > 4 input channels: F.conv2d
}


def problem(spec, dtype, steps=4, batch=4, ipc=2, seed=0):
    g = make_generator(seed, "perf")
    start = init_convnet_params(spec, g).to(dtype)
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=dtype)
    images = torch.randn((spec.num_classes * ipc, spec.channels, *spec.image_size), generator=g, dtype=dtype)
    labels = torch.arange(spec.num_classes).repeat_interleave(ipc)
    plan = draw_unroll_plan(g, len(images), batch, steps, spec.image_size, OPS)
    return start, target, images, labels, plan


def meta_gradients(kind, spec, start, target, images, labels, plan):
    """(loss, dL/dx, dL/dlr) of one matching loss: "reference" (tests/reference.py), "plain" (the
    benchmark's reference), or our ConvNet student in memory mode "unrolled" / "recompute" /
    "recompute:bare" (no convolution replayed)."""
    x = images.clone().requires_grad_(True)
    lr = torch.tensor(0.05, dtype=images.dtype, requires_grad=True)
    if kind == "reference":
        augs = [lambda im, d=s.augmentation: apply_augmentation(im, d) for s in plan]
        loss = normalised_distance(reference_unroll(spec, start, x, labels, lr, [s.indices for s in plan], augs),
                                   start, target)
    elif kind == "plain":
        from seqmatch_engine.interfaces.bench_reference import plain_matching_loss

        loss = plain_matching_loss(spec, start, target, x, labels, lr, plan)
    else:
        mode, _, option = kind.partition(":")
        student = ConvNetStudent(spec, mode, replay=option != "bare")
        loss = matching_loss(student, start, target, x, labels, lr, plan)
    loss.backward()
    return loss.detach(), x.grad, lr.grad


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk_bytes", [None, 1])  # 1: every chunk is a single image
def test_fast_and_recompute_equal_the_reference(name, dtype, tol, chunk_bytes, monkeypatch):
    if chunk_bytes:
        monkeypatch.setattr(matching, "CHUNK_BYTES", chunk_bytes)
    spec = SPECS[name]
    case = problem(spec, dtype)
    ref = meta_gradients("reference", spec, *case)
    for kind in ("unrolled", "recompute", "recompute:bare"):
        got = meta_gradients(kind, spec, *case)
        for a, b in zip(got, ref):
            assert relative_error(a, b) < tol, (kind, relative_error(a, b))
    assert ref[1].abs().sum() > 0 and ref[2] != 0


def test_generic_forward_recompute_equals_unrolled():
    spec = SPECS["im2col-even"]
    start, target, images, labels, plan = problem(spec, torch.float64)
    results = []
    for mode in ("unrolled", "recompute"):
        x = images.clone().requires_grad_(True)
        lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        matching_loss(lambda p, xx: convnet_forward(p, xx, spec), start, target, x, labels, lr, plan, mode).backward()
        results.append((x.grad, lr.grad))
    for a, b in zip(*results):
        assert relative_error(a, b) < 1e-12


def test_fused_kernels_pass_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(0)
    for size in (6, 7):
        z = torch.randn(2, 3, size, size, dtype=torch.float64, generator=g, requires_grad=True)
        gamma = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
        beta = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
        torch.testing.assert_close(NormReLUPool.apply(z, gamma, beta),
                                   F.avg_pool2d(F.relu(F.group_norm(z, 3, gamma, beta)), 2))
        assert torch.autograd.gradgradcheck(NormReLUPool.apply, (z, gamma, beta))
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    for padding in (1, 3):  # 3: MTT's first conv on 1-channel input
        conv = lambda x, w, padding=padding: Im2colConv.apply(x, w, True, padding)
        torch.testing.assert_close(conv(x, w), F.conv2d(x, w, padding=padding))
        assert torch.autograd.gradgradcheck(conv, (x, w))


def test_replayed_convolution_has_the_derivatives_of_a_computed_one():
    """Record a conv and its first-order gradients, replay them in a rebuilt graph: the double
    backward equals F.conv2d's, and the replayed values are the recorded tensors (not recomputed)."""
    g = make_generator(0, "replay")
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    a = torch.randn(2, 4, 6, 5, dtype=torch.float64, generator=g)
    v = (torch.randn(x.shape, dtype=torch.float64, generator=g), torch.randn(w.shape, dtype=torch.float64, generator=g))

    def derivatives(conv):
        first = torch.autograd.grad((torch.tanh(conv(x, w)) * a).sum(), (x, w), create_graph=True)
        return [f.detach() for f in first] + list(torch.autograd.grad(first, (x, w), v))

    record = ConvReplay()
    torch.autograd.grad((torch.tanh(record.conv(x, w)) * a).sum(), (x, w))  # the forward sweep: no graph
    replay = record.replay()
    replayed = derivatives(replay.conv)
    computed = derivatives(lambda x, w: F.conv2d(x, w, None, padding=1))
    for got, want in zip(replayed, computed):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert replayed[0].data_ptr() == record.records[0].input_grad.data_ptr()  # handed back, not recomputed
    (kept,) = record.records  # one conv: its output, input gradient and weight gradient
    assert [t.shape for t in (kept.output, kept.input_grad, kept.weight_grad)] == [a.shape, x.shape, w.shape]


@pytest.mark.parametrize("size", [(28, 28), (7, 7), (7, 6), (5, 8)])
def test_unpool_is_exactly_the_adjoint_of_average_pooling(size):
    g = make_generator(0, "unpool")
    x = torch.randn((2, 3, *size), generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn((2, 3, size[0] // 2, size[1] // 2), generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad(F.avg_pool2d(x, 2), x, grad)
    assert torch.equal(unpool2(grad, size), expected)
    assert torch.equal(unpool2(grad.transpose(2, 3).contiguous().transpose(2, 3), size), expected)  # strided input
    torch.testing.assert_close(pool2(x.detach()), F.avg_pool2d(x.detach(), 2), rtol=1e-15, atol=1e-15)  # sum order


def test_fast_forward_equals_convnet_forward_with_its_conv_biases():
    spec = SPECS["im2col-odd"]
    flat = init_convnet_params(spec, make_generator(0, "f"))
    flat = flat + 0.1 * torch.randn(flat.shape, generator=make_generator(1, "f"))  # nonzero conv biases
    x = torch.randn(3, spec.channels, *spec.image_size, generator=make_generator(2, "f"))
    torch.testing.assert_close(fast_convnet_forward(unflatten(flat, spec), x, spec), convnet_forward(flat, x, spec),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["unrolled", "recompute"])
def test_outer_step_with_the_fast_student_matches_the_generic_step(mode):
    spec = SPECS["im2col-even"]
    start, target, images, labels, plan = problem(spec, torch.float64)
    frozen, learned = images[:2], images[2:]
    states = [MatchingState.create(learned, lr=0.05, lr_img=10.0, lr_lr=1e-3, momentum=0.5) for _ in range(2)]
    forwards = [lambda p, x: convnet_forward(p, x, spec), ConvNetStudent(spec, mode)]
    results = [outer_step(f, s, frozen, labels, start, target, plan, max_lr=1.0, record_gradients=True)
               for f, s in zip(forwards, states)]
    assert results[0].loss == pytest.approx(results[1].loss, rel=1e-12)
    torch.testing.assert_close(results[1].image_grads, results[0].image_grads, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(states[1].images, states[0].images, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(states[1].lr, states[0].lr, rtol=1e-12, atol=1e-14)


# -- memory mode ----------------------------------------------------------------------------------------
def test_auto_memory_mode_follows_the_budget():
    spec = ConvNetSpec(1, (28, 28), 10, width=32, depth=3)
    need = estimate_bytes(spec, 100, 50, "unrolled")
    roomy = choose_memory_mode("auto", spec, 100, 50, available=10 * need)
    tight = choose_memory_mode("auto", spec, 100, 50, available=need)
    assert roomy.mode == "unrolled" and tight.mode == "recompute"
    assert "would not fit" in tight.describe() and "fits" in roomy.describe()
    assert choose_memory_mode("unrolled", spec, 100, 50, available=1).mode == "unrolled"
    assert choose_memory_mode("recompute", spec, 100, 50, available=1 << 50).mode == "recompute"
    with pytest.raises(ValueError, match="memory_mode"):
        choose_memory_mode("fast", spec, 100, 50)


def test_recompute_replays_convolutions_only_where_the_recordings_fit():
    spec = ConvNetSpec(1, (28, 28), 10, width=32, depth=3)
    replayed = estimate_bytes(spec, 100, 50, "recompute")
    bare = estimate_bytes(spec, 100, 50, "recompute", replay=False)
    for requested in ("auto", "recompute"):
        roomy = choose_memory_mode(requested, spec, 100, 50, available=int(1.1 * replayed / BUDGET_FRACTION))
        tight = choose_memory_mode(requested, spec, 100, 50, available=int(1.1 * bare / BUDGET_FRACTION))
        assert (roomy.mode, roomy.replay, roomy.recompute_bytes) == ("recompute", True, replayed)
        assert (tight.mode, tight.replay, tight.recompute_bytes) == ("recompute", False, bare)
        assert "replaying convolutions" in roomy.describe() and "least memory" in tight.describe()
    assert "replaying" not in choose_memory_mode("unrolled", spec, 100, 50, available=1).describe()


def test_memory_estimates_grow_with_steps_by_a_step_graph_unrolled_and_less_recomputed():
    spec = ConvNetSpec(1, (28, 28), 10, width=32, depth=3)
    unrolled = [estimate_bytes(spec, 100, n, "unrolled") for n in (10, 30, 50)]
    replayed = [estimate_bytes(spec, 100, n, "recompute") for n in (10, 30, 50)]
    bare = [estimate_bytes(spec, 100, n, "recompute", replay=False) for n in (10, 30, 50)]
    assert unrolled[0] < unrolled[1] < unrolled[2]
    assert bare[2] - bare[0] < 0.05 * bare[0]  # the least-memory variant is flat in N
    assert 0 < replayed[2] - replayed[1] < (unrolled[2] - unrolled[1]) / 8  # recordings: < 1/8 of a step's graph
    assert replayed[2] <= unrolled[2] / 4


def test_config_accepts_and_checks_memory_mode():
    raw = {"distill": {"memory_mode": "recompute"}}
    assert RunConfig.from_dict(raw).distill.memory_mode == "recompute"
    assert RunConfig.from_dict({}).distill.memory_mode == "auto"
    with pytest.raises(ConfigError, match="distill.memory_mode"):
        RunConfig.from_dict({"distill": {"memory_mode": "fast"}})


def test_distiller_reports_and_uses_the_chosen_memory_mode(tmp_path, monkeypatch):
    import seqmatch_engine.methods.mtt as methods
    import seqmatch_engine.orchestration.driver as driver
    from seqmatch_engine.storage.runs import RunFolder

    raw = {"name": "mem", "seed": 1, "device": "cpu",
           "data": {"dataset": "fashion-mnist-small", "train_per_class": 6, "val_per_class": 2},
           "model": {"width": 4, "depth": 2},
           "experts": {"num_experts": 1, "epochs": 2, "batch_size": 32},
           "distill": {"subsets": [{"ipc": 1, "interval": [0, 2], "iterations": 2}], "syn_steps": 2,
                       "expert_epochs": 1, "select_every": 0, "memory_mode": "recompute"},
           "eval": {"epochs": 1, "num_nets": 1, "batch_size": 64, "baseline": False}}
    modes = []
    real = methods.outer_step

    def spy(forward, *rest, **options):
        modes.append(forward.memory_mode)
        return real(forward, *rest, **options)

    monkeypatch.setattr(methods, "outer_step", spy)
    events = []
    run = RunFolder.create(tmp_path / "runs", RunConfig.from_dict(raw))
    driver.Distiller(run, tmp_path / "experts", events.append).run()
    phases = [e.data for e in events if e.kind == "phase" and e.data.get("name") == "distilling S1"]
    assert phases and phases[0]["memory_mode"] == "recompute"
    assert modes == ["recompute", "recompute"]
    assert run.status().memory_mode == "recompute"
    # what the app shows: the live state rebuilt from the folder, and the status card while distilling
    from seqmatch_engine.core.phases import PhaseKind
    from seqmatch_engine.interfaces.live import live_from_folder
    from seqmatch_engine.storage.records import RunState
    from views.render import status_html

    live = live_from_folder(run)
    note = "memory mode recompute (set in the config, replaying convolutions): unrolled ~"
    assert live.memory_mode == "recompute" and live.memory_note.startswith(note)
    live.phase, live.phase_kind, live.state = "distilling S1", PhaseKind.DISTILLING, RunState.RUNNING
    card = status_html(live)
    assert "memory: recompute" in card and f"title='{note}" in card


# -- experts ------------------------------------------------------------------------------------------------
def expert_problem():
    spec = ConvNetSpec(1, (8, 8), 2, width=4, depth=2)
    g = make_generator(0, "experts")
    x = torch.randn(24, 1, 8, 8, generator=g)
    y = torch.arange(2).repeat(12)
    starts = [init_convnet_params(spec, make_generator(0, "start", k)) for k in range(3)]
    return spec, x, y, starts


def test_parallel_experts_equal_experts_trained_one_at_a_time(tmp_path):
    spec, x, y, starts = expert_problem()

    def train_one(k):
        return train_trajectory(spec, x, y, starts[k], 3, 0.1, 8, True, make_generator(0, "expert", k))

    with single_threaded_ops():
        alone = {k: train_one(k) for k in range(3)}
    for workers in (2, 3):
        together = dict(run_in_parallel(train_one, [0, 1, 2], workers))
        assert sorted(together) == [0, 1, 2]
        for k in range(3):
            assert torch.equal(together[k], alone[k])  # bit for bit: each expert's ops ran the same way
    assert list(run_in_parallel(train_one, [], 2)) == []


def test_an_expert_error_stops_the_parallel_training():
    started = []

    def train_one(k):
        started.append(k)
        if k == 0:
            raise RuntimeError("expert 0 failed")
        return torch.zeros(1)

    with pytest.raises(RuntimeError, match="expert 0 failed"):
        list(run_in_parallel(train_one, list(range(50)), 2))
    assert len(started) < 50  # the rest were cancelled


def test_fast_experts_equal_a_plain_autograd_sgd_loop():
    spec, x, y, starts = expert_problem()
    start = starts[0].double()
    fast = train_trajectory(spec, x.double(), y, start, 2, 0.1, 8, True, make_generator(0, "expert", 0))
    g = make_generator(0, "expert", 0)
    params, plain = start.clone(), [start.clone()]
    for _ in range(2):
        for rows in draw_minibatches(g, len(x), 8, 3):
            batch = augment(x.double()[rows], g, DSA_OPERATIONS)
            params.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(convnet_forward(params, batch, spec), y[rows]), params)
            params = (params - 0.1 * grad).detach()
        plain.append(params.clone())
    torch.testing.assert_close(fast, torch.stack(plain), rtol=1e-9, atol=1e-11)


# -- benchmark's references and CLI ---------------------------------------------------------------------------
def test_bench_plain_reference_equals_our_step():
    spec = SPECS["im2col-odd"]
    case = problem(spec, torch.float64)
    for a, b in zip(meta_gradients("plain", spec, *case), meta_gradients("unrolled", spec, *case)):
        assert relative_error(a, b) < 1e-11


def test_bench_command_is_wired():
    from seqmatch_engine.interfaces.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--threads", "1", "--only", "memory"])
    assert args.quick and args.threads == 1 and args.only == ["memory"] and args.func.__name__ == "cmd_bench"


@pytest.mark.parametrize("impl", ["plain", "ours", "parallel"])
def test_bench_expert_children_run(impl):
    from seqmatch_engine.interfaces.bench import child_main

    result = child_main({"kind": "experts", "impl": impl, "images": 64, "reps": 1})
    assert len(result["times"]) == 1 and result["times"][0] > 0
    assert result["images"] == 64 * result["experts"]


def test_evaluation_nets_trained_two_at_a_time_give_the_same_accuracies(tmp_path):
    from configs import tiny_run_config

    from seqmatch_engine.maths.evaluate import curriculum_from_subsets
    from seqmatch_engine.orchestration.context import RunContext
    from seqmatch_engine.orchestration.executors import LocalExecutor

    config = tiny_run_config("nets", 0, (1,))
    runs, seen = [], []
    for workers in (1, 2):
        ctx = RunContext(config, tmp_path / str(workers), executor=LocalExecutor(workers))  # each trains its nets
        x, y = ctx.data.train_images, ctx.data.train_labels
        stages = curriculum_from_subsets([(x[:8], y[:8]), (x[8:16], y[8:16])], [0.05, 0.02])
        runs.append(ctx.evaluate(stages, "convnet", 3, "test", "t", lambda done, total: seen.append((done, total))))
    assert runs[0].values == runs[1].values and len(runs[0].values) == 3
    assert seen[-1] == (12, 12) and len(seen) == 2 * 12  # 3 nets x 2 stages x 2 epochs, per epoch


def test_a_single_core_thread_leaves_the_other_threads_their_cores(tmp_path):
    import threading

    from seqmatch_engine.interfaces.manager import JobManager
    from seqmatch_engine.maths.parallel import keep_this_thread_single_core
    from views.layout import build_app

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {}

        def handler(name, single):
            if single:
                assert keep_this_thread_single_core()
            torch.rand(200, 1, 28, 28).mul(2).clamp(0, 1)  # an op big enough to run in parallel
            seen[name] = torch.get_num_threads()

        for name, single in (("handler", True), ("other", False)):
            thread = threading.Thread(target=handler, args=(name, single))
            thread.start()
            thread.join()
        assert seen == {"handler": 1, "other": 2} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # every handler of the app runs that way
    demo = build_app(JobManager(tmp_path))
    handlers = [f.fn for f in demo.fns.values() if f.fn is not None]
    assert handlers and all(getattr(fn, "__wrapped__", None) is not None for fn in handlers)


ALLOCATOR_PROBE = """
import ctypes, resource, torch
from seqmatch_engine.maths.memory import tune_cpu_allocator
tuned = tune_cpu_allocator()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
def fresh_256_mib_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(1 << 26)  # touched: every page is written
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, libc.mallinfo2().fordblks >> 20
first, _ = fresh_256_mib_tensor()
settled = [fresh_256_mib_tensor() for _ in range(6)][-3:]  # glibc may grow the heap twice first
print(tuned, first, max(f for f, _ in settled), min(kept for _, kept in settled))
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc allocator")
def test_tuned_allocator_keeps_freed_memory_in_the_process():
    """After tuning, memory freed by one step stays in the heap for the next (glibc's free bytes hold the
    256 MiB tensor once freed); untuned, glibc hands it back to the kernel (munmap) and every allocation
    faults its 65536 pages in again. (A trim threshold that overflowed mallopt's int once set it to 0: trim
    on every free.) Whether re-allocating kept memory also avoids page faults is the kernel's choice (one CI
    machine reclaimed free heap pages itself), so faults are asserted only for the untuned heap."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("SEQMATCH_MALLOC_TUNING", None)

    def probe(extra: dict) -> tuple[str, int, int, int]:
        out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env={**env, **extra}, capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0], int(out[1]), int(out[2]), int(out[3])

    tuned, first, settled, kept_mib = probe({})
    assert tuned == "True" and first > 30000 and kept_mib >= 256, (tuned, first, settled, kept_mib)
    untuned, _, untuned_settled, untuned_kept_mib = probe({"SEQMATCH_MALLOC_TUNING": "0"})
    assert untuned == "False" and untuned_settled > 30000 and untuned_kept_mib < 256, (untuned_settled, untuned_kept_mib)


def test_bench_batched_nets_compute_each_net_as_alone():
    """The bench's grouped model of 3 ConvNets gives each net's own logits on its own input."""
    from seqmatch_engine.interfaces.bench_eval import batched_forward, stacked_params
    from seqmatch_engine.maths.models import ConvNet, ConvNetSpec, init_convnet_params

    spec = ConvNetSpec(1, (28, 28), 10, width=8, depth=3)
    g = make_generator(0, "test-batched")
    flats = [init_convnet_params(spec, g) for _ in range(3)]
    inputs = [torch.randn(4, 1, 28, 28, generator=g) for _ in flats]
    logits = batched_forward(stacked_params(spec, flats), torch.cat(inputs, dim=1), spec, 3)
    assert logits.shape == (4, 3, 10)
    for n, (flat, x) in enumerate(zip(flats, inputs)):
        torch.testing.assert_close(logits[:, n], ConvNet(spec, flat)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["separate", "batched"])
def test_bench_evaluation_net_children_run(impl):
    from seqmatch_engine.interfaces.bench import child_main

    result = child_main({"kind": "nets", "impl": impl, "epochs": 1, "reps": 1})
    assert len(result["times"]) == 1 and result["times"][0] > 0


def test_bench_selection_children_score_alike_both_ways():
    from seqmatch_engine.interfaces.bench import child_main

    whole, shared = (child_main({"kind": "selection", "impl": impl, "epochs": 2, "reps": 0})
                     for impl in ("whole", "shared"))
    assert len(whole["accuracies"]) == 5 and whole["accuracies"] == shared["accuracies"]


def test_the_bench_precision_paths_compute_the_convnet():
    """bench --only fashion/precision compares paths that compute the same ConvNet: plain fp32 and its channels-last
    variant equal convnet_forward to fp32 rounding; bf16 convolutions are within bf16's ~3 significant digits."""
    from seqmatch_engine.interfaces.bench_precision import FASHION, plain_forward

    g = make_generator(0, "precision-test")
    flat, x = init_convnet_params(FASHION, g), torch.randn((6, 1, 28, 28), generator=g)
    expected = convnet_forward(flat.double(), x.double(), FASHION)
    for channels_last in (False, True):
        assert relative_error(plain_forward(flat, x, FASHION, channels_last=channels_last), expected) < 1e-5
    assert relative_error(plain_forward(flat.double(), x.double(), FASHION, torch.float64), expected) < 1e-12
    bf16 = relative_error(plain_forward(flat, x, FASHION, torch.bfloat16), expected)
    assert 1e-5 < bf16 < 3e-2  # rounded, as bf16 must be, and not wrong
