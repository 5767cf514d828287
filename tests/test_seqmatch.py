"""The stage driver: MTT equivalence, frozen subsets, curriculum order, resume, guards, determinism."""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from configs import tiny_run_config
from reference import reference_unroll
from torch import nn

import seqmatch_engine.methods.mtt as methods
from seqmatch_engine.core.config import EvalConfig, RunConfig, as_static
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.data.prepare import prepare_data
from seqmatch_engine.maths.augment import DSA_OPERATIONS, apply_augmentation
from seqmatch_engine.maths.evaluate import Accuracy, CurriculumStage, train_curriculum
from seqmatch_engine.maths.matching import draw_unroll_plan, normalised_distance
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.orchestration.driver import Distiller, RunControl, Selection, StopRequested, initial_images
from seqmatch_engine.orchestration.executors import LocalExecutor
from seqmatch_engine.orchestration.jobs import EvalJob, NetState, train_partway
from seqmatch_engine.storage.files import read_json
from seqmatch_engine.storage.records import DivergenceRecord, IterationRecord, SelectionRecord
from seqmatch_engine.storage.runs import RunFolder, Subset


def tiny_config(**distill) -> RunConfig:
    return tiny_run_config("tiny", 3, (1, 1), **distill)


def run_to_end(tmp_path, config, name="run", observer=None, control=None, executor=None):
    run = RunFolder.create(tmp_path / name, config)
    return run, Distiller(run, tmp_path / "experts", observer, control, executor=executor).run()


def test_static_run_equals_a_plain_mtt_loop(tmp_path):
    config = as_static(tiny_config())
    run, result = run_to_end(tmp_path, config)
    ctx = RunContext(config, tmp_path / "experts")
    data = ctx.data
    experts = ctx.cached_stage1_experts()
    sub, dist = config.distill.subsets[0], config.distill
    # Plain MTT, written out: same random draws, reference unroll, hand-written momentum SGD.
    x = initial_images(data, sub.ipc, "real", make_generator(config.seed, "init", 0))
    labels = torch.arange(data.num_classes).repeat_interleave(sub.ipc)
    lr, vx, vlr = torch.tensor(sub.lr_init), torch.zeros_like(x), torch.tensor(0.0)
    g = make_generator(config.seed, "distill", 0)
    for _ in range(sub.iterations):
        e = int(torch.randint(len(experts), (1,), generator=g))
        t = int(torch.randint(sub.interval[0], sub.interval[1] - dist.expert_epochs, (1,), generator=g))
        plan = draw_unroll_plan(g, len(x), data.num_classes * sub.ipc, dist.syn_steps, data.image_size, DSA_OPERATIONS)
        xs, lrs = x.clone().requires_grad_(True), lr.clone().requires_grad_(True)
        final = reference_unroll(ctx.spec, experts[e, t], xs, labels, lrs, [s.indices for s in plan],
                                 [lambda im, d=s.augmentation: apply_augmentation(im, d) for s in plan])
        normalised_distance(final, experts[e, t], experts[e, t + dist.expert_epochs]).backward()
        vx, vlr = dist.momentum * vx + xs.grad, dist.momentum * vlr + lrs.grad
        x, lr = x - dist.lr_img * vx, lr - dist.lr_lr * vlr
    (learned,) = run.subsets()
    torch.testing.assert_close(learned.images, x, rtol=1e-4, atol=1e-5)
    assert learned.lr == pytest.approx(float(lr), rel=1e-5)
    assert result["method"] == "mtt" and result["ipc"] == 2


def test_stage_two_never_touches_stage_one_pixels(tmp_path, monkeypatch):

    captured = []
    real_outer_step = methods.outer_step

    def spy(forward, state, frozen, labels, *rest, **options):
        before = frozen.clone()
        loss = real_outer_step(forward, state, frozen, labels, *rest, **options)
        captured.append((before, frozen.clone(), len(labels)))
        return loss

    monkeypatch.setattr(methods, "outer_step", spy)
    run, _ = run_to_end(tmp_path, tiny_config())
    stage2 = [c for c in captured if len(c[0])]
    assert len(stage2) == 4
    s1 = run.subsets()[0].images  # S1 as saved when its stage ended
    for before, after, n_labels in stage2:
        assert torch.equal(before, s1) and torch.equal(after, s1)
        assert n_labels == 20  # U_1 + S_2: 10 classes x (1 + 1)


class Recorder(nn.Module):
    """A net that records the batch sizes it sees; the optimiser's lr is read by a hook."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.linear(x.flatten(1)[:, :4])


def test_evaluation_visits_subsets_in_order_with_their_own_lrs(monkeypatch):
    lrs_seen = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        lrs_seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    u1 = CurriculumStage(torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 0]), lr=0.5)
    u2 = CurriculumStage(torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 0, 1, 1]), lr=0.2)
    net = Recorder()
    train_curriculum(net, [u1, u2], EvalConfig(epochs=4, batch_size=64, augment=False), make_generator(0, "e"))
    assert net.sizes == [3] * 4 + [5] * 4
    assert lrs_seen == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.2, 0.2, 0.02, 0.02])


def test_same_seed_same_images_and_resume_after_kill_matches(tmp_path):
    config = tiny_config(select_every=2)
    reference, _ = run_to_end(tmp_path, config, "reference")
    shutil.rmtree(tmp_path / "experts" / "evaluations")  # the second run trains its selection nets again
    again, _ = run_to_end(tmp_path, config, "again")
    for a, b in zip(reference.subsets(), again.subsets()):
        assert torch.equal(a.images, b.images) and a.lr == b.lr

    class Killed(Exception):
        pass

    def kill_in_stage_two(event):
        if event.kind == "iteration" and event.stage == 1 and event.iteration == 3:
            raise Killed()  # like a kill: no clean shutdown, checkpoint of iteration 2 on disk

    run = RunFolder.create(tmp_path / "killed", config)
    with pytest.raises(Killed):
        Distiller(run, tmp_path / "experts", kill_in_stage_two).run()
    assert run.status().state == "failed" and len(run.subsets()) == 1
    result = Distiller(RunFolder(run.path), tmp_path / "experts").run()
    assert result is not None
    for a, b in zip(reference.subsets(), run.subsets()):
        assert torch.equal(a.images, b.images) and a.lr == b.lr
    iterations = [(r.stage, r.iteration) for r in run.metrics() if isinstance(r, IterationRecord)]
    assert iterations == [(0, i) for i in range(1, 5)] + [(1, i) for i in range(1, 5)]
    assert any("resumed S2 at iteration 2" in m.text for m in run.status().messages)


def test_stop_and_pause_between_iterations(tmp_path):
    control = RunControl()
    events = []

    def observer(event):
        events.append(event)
        if event.kind == "iteration" and event.iteration == 2:
            control.stop()

    run, result = run_to_end(tmp_path, tiny_config(), observer=observer, control=control)
    assert result is None and run.status().state == "stopped"
    assert max(e.iteration for e in events if e.kind == "iteration") == 2
    with pytest.raises(StopRequested):
        control.checkpoint()
    paused = RunControl()
    paused.pause()
    assert paused.paused and not paused._running.wait(timeout=0.05)
    paused.resume()
    paused.checkpoint()  # returns at once when running


def test_exploding_lr_stops_the_stage_with_a_message_and_keeps_the_initial_images(tmp_path):
    run, result = run_to_end(tmp_path, tiny_config(lr_lr=1e9))
    assert result is not None  # the run went on with what was kept
    messages = [m.text for m in run.status().messages if m.level == "warning"]
    assert messages and "lower distill.lr_lr" in messages[0]
    assert "Kept the initial images (nothing was validated before)" in messages[0]
    data = prepare_data(run.config().data, run.config().seed, torch.device("cpu"))
    init = initial_images(data, 1, "real", make_generator(run.config().seed, "init", 0))
    assert torch.equal(run.subsets()[0].images, init)
    assert run.subsets()[0].lr == pytest.approx(run.config().distill.subsets[0].lr_init)  # stored as float32
    for subset in run.subsets():
        assert torch.isfinite(subset.images).all() and 0 < subset.lr <= 1.0
    assert any(isinstance(r, DivergenceRecord) for r in run.metrics())
    assert result["diverged"] == run.status().diverged and 0 in result["diverged"]


def test_exploding_pixels_are_caught_early_blame_lr_img_and_keep_the_best_validated_images(tmp_path):
    """A pixel lr far too large: the guard fires on the pixels, before the learned lr turns negative, names
    distill.lr_img, keeps the best validated images (sane, as every kept image), and stage 2 builds on them."""
    config = tiny_config(lr_img=2e4, select_every=1)
    run, result = run_to_end(tmp_path, config)
    warnings = [m.text for m in run.status().messages if m.level == "warning"]
    assert warnings and all("synthetic pixels exploded" in text and "lower distill.lr_img (now 20000)" in text
                            for text in warnings), warnings
    assert "Kept the best validated images (iteration 0)" in warnings[0]
    divergences = [r for r in run.metrics() if isinstance(r, DivergenceRecord)]
    assert divergences[0].iteration == 2  # caught at 20x the normal scale, long before the pixels reach 1e6
    data = prepare_data(config.data, config.seed, torch.device("cpu"))
    limit = 20 * float(data.train_images.pow(2).mean().sqrt())
    for subset in run.subsets():
        assert float(subset.images.flatten(1).pow(2).mean(1).sqrt().max()) < limit
    assert result["diverged"][0] == 0 and result["diverged"] == run.status().diverged


def test_evaluation_jobs_met_again_are_read_not_trained(tmp_path, monkeypatch):
    """The random-real baseline is trained once per recipe and shared by a comparison's runs; a damaged
    cache file is measured again; another seed is another baseline."""
    import seqmatch_engine.orchestration.context as context

    trained = []
    real = context.train_and_test

    def spy(job, *args, **kwargs):
        if job.split == "test":
            trained.append(job.tag)  # the set's tag: "synthetic" or "random_real"
        return real(job, *args, **kwargs)

    monkeypatch.setattr(context, "train_and_test", spy)
    seqmatch = tiny_config(subsets=[{"ipc": 1, "interval": [0, 3], "iterations": 1},
                                    {"ipc": 1, "interval": [0, 3], "iterations": 1}])
    _, first = run_to_end(tmp_path, as_static(seqmatch), "mtt")
    _, second = run_to_end(tmp_path, seqmatch, "seqmatch")
    assert trained == ["synthetic", "random_real", "synthetic"]  # the SeqMatch run reused the MTT run's baseline
    assert second["random_real"] == first["random_real"]
    files = {p: read_json(p) for p in (tmp_path / "experts" / "evaluations").glob("*.json")}
    baseline_files = [p for p, stored in files.items() if stored["recipe"]["tag"] == "random_real"]
    assert len(baseline_files) == 1 and len(files) == 3  # one test net per set (num_nets 1): MTT, SeqMatch, real
    baseline_files[0].write_text("{not json")  # a damaged cache file is measured again
    _, third = run_to_end(tmp_path, seqmatch, "again")
    assert trained[3:] == ["random_real"] and third == second  # the SeqMatch set itself was read
    other_seed = RunConfig.from_dict({**seqmatch.to_dict(), "seed": 4})
    run_to_end(tmp_path, other_seed, "seed4")
    assert trained[-1] == "random_real"  # another seed draws another random real set


def test_the_evaluation_cache_tells_jobs_apart_by_what_determines_them(tmp_path, monkeypatch):
    import seqmatch_engine.orchestration.eval_cache as eval_cache

    ctx = RunContext(tiny_config(), tmp_path)
    g = make_generator(0, "test-cache")
    stage = CurriculumStage(torch.randn(10, 1, 28, 28, generator=g), torch.arange(10), 0.01)
    job = EvalJob(ctx.data_ref, ctx.spec, ctx.config.eval, "convnet", (stage,), 3, "synthetic", 0, "test", "cpu")
    cache, data = ctx.evaluations, ctx.evaluation_data_digest
    cache.put(job, data, 0.25)
    assert cache.get(job, data) == 0.25
    settings = job.eval_config
    assert cache.get(dataclasses.replace(job, eval_config=dataclasses.replace(settings, num_nets=9)), data) == 0.25
    state = NetState({"w": torch.zeros(2)}, g.get_state())
    others = [dataclasses.replace(job, stages=(dataclasses.replace(stage, images=stage.images + 1e-3),)),
              dataclasses.replace(job, stages=(dataclasses.replace(stage, labels=stage.labels.flip(0)),)),
              dataclasses.replace(job, stages=(dataclasses.replace(stage, lr=0.011),)),
              dataclasses.replace(job, stages=(stage, stage)), dataclasses.replace(job, index=1),
              dataclasses.replace(job, tag="random_real"), dataclasses.replace(job, split="val"),
              dataclasses.replace(job, seed=4), dataclasses.replace(job, arch="resnet18"),
              dataclasses.replace(job, spec=dataclasses.replace(job.spec, width=16)),
              dataclasses.replace(job, data=dataclasses.replace(job.data, seed=5)), dataclasses.replace(job, start=state)]
    others += [dataclasses.replace(job, eval_config=dataclasses.replace(settings, **{name: value}))
               for name, value in (("epochs", 3), ("batch_size", 7), ("momentum", 0.5), ("weight_decay", 0.0),
                                   ("augment", not settings.augment))]
    for other in others:
        assert cache.get(other, data) is None
    assert cache.get(job, "other validation and test tensors") is None
    monkeypatch.setattr(eval_cache, "code_version", lambda: "edited")  # the training code or torch changed
    assert cache.get(job, data) is None
    monkeypatch.undo()
    monkeypatch.setattr(eval_cache, "_kernels", lambda device: "torch")  # the fused kernels off
    assert cache.get(job, data) is None


def test_an_evaluation_cache_that_cannot_be_written_costs_speed_not_the_run(tmp_path):
    ctx = RunContext(tiny_config(), tmp_path)
    (tmp_path / "evaluations").write_text("a file where the cache folder would be")
    x, y = ctx.data.train_images[:10], ctx.data.train_labels[:10]
    with pytest.warns(UserWarning, match="could not save an evaluation result .* the run goes on"):
        accuracy = ctx.evaluate([CurriculumStage(x, y, 0.01)], "convnet", 1, "val", "synthetic")
    assert 0 <= accuracy.mean <= 1


def test_experts_trained_two_at_a_time_give_the_same_run_and_are_reused(tmp_path):
    config = tiny_config()  # K = 2: stage-1 experts and retrained stage-2 experts
    one, alone = run_to_end(tmp_path / "one", config, executor=LocalExecutor(1))
    two, together = run_to_end(tmp_path / "two", config, executor=LocalExecutor(2))
    _, cached = run_to_end(tmp_path / "two", config, "again", executor=LocalExecutor(2))  # every expert cached
    assert together["synthetic"] == alone["synthetic"] == cached["synthetic"]
    for a, b in zip(one.subsets(), two.subsets()):
        assert torch.equal(a.images, b.images)


def test_the_initial_images_are_measured_at_the_first_selection_not_before_the_first_step(tmp_path):
    events = []
    run, _ = run_to_end(tmp_path, tiny_config(select_every=2), observer=events.append)
    stage0 = [(e.kind, e.iteration) for e in events if e.stage == 0 and e.kind in ("iteration", "selection")]
    assert stage0[:5] == [("iteration", 1), ("iteration", 2), ("selection", 0), ("selection", 2), ("iteration", 3)]
    selections = [r for r in run.metrics() if isinstance(r, SelectionRecord) and r.stage == 0]
    assert [r.iteration for r in selections] == [0, 2, 4]
    best = max(selections, key=lambda r: r.val_accuracy)  # the first best wins ties
    (done,) = [e for e in events if e.kind == "stage_done" and e.stage == 0]
    assert done.data["data"]["best_iteration"] == best.iteration


def test_selection_ties_keep_the_earlier_candidate(tmp_path, monkeypatch):
    """Equal validation accuracies: the first candidate (the initial images) stays the best."""
    monkeypatch.setattr(RunContext, "evaluate", lambda self, *args, **kwargs: Accuracy([0.5]))
    run, _ = run_to_end(tmp_path, tiny_config(select_every=2))
    selections = [r for r in run.metrics() if isinstance(r, SelectionRecord) and r.stage == 0]
    assert [(r.iteration, r.best) for r in selections] == [(0, True), (2, False), (4, False)]
    data = prepare_data(run.config().data, run.config().seed, torch.device("cpu"))
    init = initial_images(data, 1, "real", make_generator(run.config().seed, "init", 0))
    assert torch.equal(run.subsets()[0].images, init)  # the kept S1 is the first candidate


def test_the_stage2_expert_key_changes_with_the_learned_lr_of_s1(tmp_path):
    ctx = RunContext(tiny_config(), tmp_path)
    images, labels = torch.zeros(10, 1, 28, 28), torch.arange(10)
    key = lambda lr: ctx.retrained_recipe(1, [Subset(images, labels, lr)])  # noqa: E731
    assert key(0.01) != key(0.011)  # experts pre-trained with another lr are other experts
    assert key(0.01) == key(0.01)
    assert ctx.retrained_recipe(1, [Subset(images + 1, labels, 0.01)]) != key(0.01)  # and other pixels too


def test_images_are_published_every_publish_every_iterations_and_at_the_end(tmp_path):
    events = []
    run_to_end(tmp_path, tiny_config(publish_every=3), observer=events.append)
    published = [(e.stage, e.iteration) for e in events if e.kind == "iteration" and e.data["images"] is not None]
    assert published == [(0, 3), (0, 4), (1, 3), (1, 4)]  # 4 iterations per stage: the 3rd and the last


@pytest.mark.parametrize("arch", ["convnet", "resnet18"])
def test_going_on_from_a_partway_net_gives_the_bits_of_training_straight_through(tmp_path, arch):
    """train_partway on U_1, then the rest from its NetState == one job through the whole curriculum (the
    net's tensors, BatchNorm statistics included, and its generator carry everything between stages)."""
    config = tiny_run_config("partway", 3, (1,))
    ctx = RunContext(config, tmp_path / "experts")
    g = make_generator(0, "test-partway")
    u1 = CurriculumStage(torch.randn(10, 1, 28, 28, generator=g), torch.arange(10), 0.01)
    u2 = CurriculumStage(torch.randn(20, 1, 28, 28, generator=g), torch.arange(10).repeat(2), 0.02)
    u3 = CurriculumStage(torch.randn(30, 1, 28, 28, generator=g), torch.arange(10).repeat(3), 0.03)
    straight = ctx.evaluate([u1, u2, u3], arch, 2, "val", "select-2")
    starts = ctx.train_partway([u1, u2], arch, 2, "select-2")
    assert ctx.evaluate([u3], arch, 2, "val", "select-2", starts=starts).values == straight.values

    def job(stages, start=None):
        return EvalJob(ctx.data_ref, ctx.spec, config.eval, arch, tuple(stages), config.seed, "select-2", 1, "val",
                       "cpu", start)

    through = train_partway(job([u1, u2, u3]))
    on = train_partway(job([u3], train_partway(job([u1, u2]))))
    assert through.tensors.keys() == on.tensors.keys()
    assert all(torch.equal(through.tensors[name], on.tensors[name]) for name in through.tensors)
    assert torch.equal(through.generator_state, on.generator_state)
    from_init = train_partway(job([u3]))  # the check can fail: the start matters
    assert not all(torch.equal(through.tensors[name], from_init.tensors[name]) for name in through.tensors)


def test_selection_trains_the_earlier_stages_once_per_stage_and_scores_as_before(tmp_path, monkeypatch):
    """Scoring stage k's candidates from shared nets trained through U_1..U_{k-1} gives the selection
    accuracies (and so the kept subsets) of training every candidate's whole curriculum."""
    config = tiny_run_config("select", 3, (1, 1, 1), select_every=2)
    config.eval.select_nets = 2
    config.eval.epochs = 4
    partway_calls = []
    real_partway = RunContext.train_partway

    def counting(self, stages, *args, **kwargs):
        partway_calls.append(len(stages))
        return real_partway(self, stages, *args, **kwargs)

    monkeypatch.setattr(RunContext, "train_partway", counting)
    shared, _ = run_to_end(tmp_path, config, "shared")
    assert partway_calls == [1, 2]  # stage 2 after U_1, stage 3 after U_2; 3 candidates each
    monkeypatch.setattr(Selection, "after_earlier_stages", lambda *args: None)
    whole, _ = run_to_end(tmp_path, config, "whole")
    scores = [[(r.stage, r.iteration, r.val_accuracy) for r in run.metrics() if isinstance(r, SelectionRecord)]
              for run in (shared, whole)]
    assert len(scores[0]) == 9 and scores[0] == scores[1]
    for a, b in zip(shared.subsets(), whole.subsets()):
        assert torch.equal(a.images, b.images) and a.lr == b.lr


def test_seqmatch_first_subset_is_scored_from_static_mtts_evaluations(tmp_path, monkeypatch):
    """SeqMatch's S_1 at IPC 2k is static MTT's set at IPC k (same recipe and seed): its selection candidates
    were scored by the MTT run, so the SeqMatch run trains selection nets for S_2 only."""
    import seqmatch_engine.orchestration.context as context

    trained = []
    real = context.train_and_test
    monkeypatch.setattr(context, "train_and_test", lambda job, *a, **k: trained.append(job.tag) or real(job, *a, **k))
    mtt_run, _ = run_to_end(tmp_path, tiny_run_config("mtt", 3, (1,), select_every=2), "mtt")
    assert set(trained) == {"select-0", "synthetic", "random_real"}
    trained.clear()
    seqmatch_run, _ = run_to_end(tmp_path, tiny_run_config("seqmatch", 3, (1, 1), select_every=2), "seqmatch")
    assert "select-0" not in trained and "select-1" in trained
    (mtt_set,) = mtt_run.subsets()
    assert torch.equal(seqmatch_run.subsets()[0].images, mtt_set.images) and seqmatch_run.subsets()[0].lr == mtt_set.lr


def test_select_points_scores_at_its_points_and_equals_select_every_where_they_coincide(tmp_path):
    """4 iterations: select_every 2 and select_points 2 both score after iterations 2 and 4 (and the initial images):
    the same records and the same kept subsets, bit for bit; select_points 4 scores after every iteration."""
    runs = {name: run_to_end(tmp_path, tiny_config(**distill), name)[0]
            for name, distill in (("every", {"select_every": 2}), ("points", {"select_points": 2, "select_every": 0}),
                                  ("four", {"select_points": 4, "select_every": 0}))}

    def scored(run):
        return [(r.stage, r.iteration, r.val_accuracy) for r in run.metrics() if isinstance(r, SelectionRecord)]

    assert [(s, i) for s, i, _ in scored(runs["every"])] == [(0, 0), (0, 2), (0, 4), (1, 0), (1, 2), (1, 4)]
    assert scored(runs["points"]) == scored(runs["every"])
    for a, b in zip(runs["every"].subsets(), runs["points"].subsets()):
        assert torch.equal(a.images, b.images) and a.lr == b.lr
    assert [(s, i) for s, i, _ in scored(runs["four"])] == [(k, i) for k in (0, 1) for i in range(5)]
    final = [v for s, _, v in scored(runs["four"]) if s == 1]
    assert runs["four"].validation_accuracy() == max(final)
