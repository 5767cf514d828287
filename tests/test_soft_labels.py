"""Soft labels and DATM: the maths against independent formulas and finite differences, the window, the initial
images and labels, resume, export and import, fair scores."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from configs import tiny_run_config
from test_matching import SPEC, forward, tiny_problem

from seqmatch_engine.core.config import ConfigError, RunConfig, method_name, method_parts
from seqmatch_engine.core.labels import hard, soft_cross_entropy, targets
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.data.prepare import PreparedData
from seqmatch_engine.maths.matching import ConvNetStudent, MatchingState, matching_loss, outer_step
from seqmatch_engine.maths.models import ConvNetSpec
from seqmatch_engine.methods import OBJECTIVES
from seqmatch_engine.methods.datm import correct_real_images, window_at
from seqmatch_engine.orchestration.driver import Distiller
from seqmatch_engine.storage.export import export_set
from seqmatch_engine.storage.runs import RunFolder


def test_soft_cross_entropy_is_the_formula_and_hard_labels_are_unchanged():
    g = make_generator(0, "soft-ce")
    outputs, logits = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g,
                                                                                      dtype=torch.float64)
    by_hand = sum(-sum(torch.log_softmax(outputs[b], 0)[c] * torch.softmax(logits[b], 0)[c] for c in range(5))
                  for b in range(7)) / 7
    assert float(soft_cross_entropy(outputs, logits)) == pytest.approx(float(by_hand), rel=1e-12)
    assert float(F.cross_entropy(outputs, targets(logits))) == pytest.approx(float(by_hand), rel=1e-12)
    classes = torch.tensor([0, 4, 2])
    assert targets(classes) is classes and torch.equal(hard(classes), classes)
    assert torch.equal(hard(logits), logits.argmax(1))


@pytest.mark.parametrize("mode", ["unrolled", "recompute"])
def test_the_label_gradient_through_the_unroll_matches_finite_differences(mode):
    """d loss / d label logits through N unrolled steps of soft cross-entropy (fp64), both memory modes."""
    start, target, images, classes, plan = tiny_problem(steps=3)
    g = make_generator(1, "label-logits")
    logits = torch.randn(len(classes), SPEC.num_classes, generator=g, dtype=torch.float64).requires_grad_(True)
    lr = torch.tensor(0.1, dtype=torch.float64)

    def loss_of(label_logits):
        return matching_loss(forward, start, target, images, targets(label_logits), lr, plan, mode)

    loss_of(logits).backward()
    analytic = logits.grad.clone()
    assert analytic.abs().max() > 1e-6  # the labels do move the loss: the check can fail
    numeric = torch.zeros_like(logits)
    eps = 1e-6
    for i in range(logits.numel()):
        bump = torch.zeros(logits.numel(), dtype=torch.float64)
        bump[i] = eps
        bump = bump.view_as(logits)
        numeric.view(-1)[i] = (loss_of(logits.detach() + bump) - loss_of(logits.detach() - bump)).detach() / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_the_fused_student_gives_the_label_gradient_of_the_generic_one():
    spec = ConvNetSpec(channels=2, image_size=(8, 8), num_classes=3, width=4, depth=2)
    start, target, images, classes, plan = tiny_problem(steps=2)
    logits = torch.randn(len(classes), 3, generator=make_generator(2, "l"), dtype=torch.float64)
    grads = []
    for student in (forward, ConvNetStudent(spec, "unrolled"), ConvNetStudent(spec, "recompute")):
        leaf = logits.clone().requires_grad_(True)
        matching_loss(student, start, target, images, targets(leaf), torch.tensor(0.1, dtype=torch.float64),
                      plan).backward()
        grads.append(leaf.grad)
    for other in grads[1:]:
        torch.testing.assert_close(other, grads[0], rtol=1e-9, atol=1e-12)


def test_an_outer_step_learns_soft_labels_and_the_gate_holds_every_optimiser():
    start, target, images, classes, plan = tiny_problem(dtype=torch.float32, steps=2)
    logits = torch.randn(len(classes), 3, generator=make_generator(3, "l"))
    learned = MatchingState.create(images, 0.1, 10.0, 1e-3, 0.5, labels=logits, lr_label=2.0, label_momentum=0.9)
    outer_step(forward, learned, images.new_empty(0), logits, start, target, plan, max_lr=1.0)
    assert not torch.equal(learned.labels.detach(), logits) and not torch.equal(learned.images.detach(), images)
    assert "label_momentum" in learned.optimized()
    gated = MatchingState.create(images, 0.1, 10.0, 1e-3, 0.5, labels=logits, lr_label=2.0, label_momentum=0.9)
    result = outer_step(forward, gated, images.new_empty(0), logits, start, target, plan, max_lr=1.0,
                        update_below=1e-9)  # the loss is never that small: nothing moves
    assert result.loss > 1e-9
    assert torch.equal(gated.labels.detach(), logits) and torch.equal(gated.images.detach(), images)
    assert float(gated.lr) == pytest.approx(0.1)


@pytest.mark.parametrize("iteration, expected", [(0, (0, 10)), (50, (0, 15)), (99, (0, 19)), (100, (0, 20)),
                                                 (500, (0, 20))])
def test_datm_window_grows_linearly_to_the_interval_end(iteration, expected):
    assert window_at((0, 20), 10, 100, iteration) == expected
    assert window_at((0, 20), None, 100, iteration) == (0, 20)


def test_datm_starts_from_correctly_classified_images_with_the_mean_logits_of_the_experts_that_agree():
    """A hand-built case: 'experts' are tables of logits by image id; class 0 has 4 images, class 1 has 3."""
    ids = torch.arange(7, dtype=torch.float32)
    images = ids.view(7, 1, 1, 1)
    train_labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    table = torch.tensor([  # expert e's logits for image i: rows = experts, [image, class]
        [[2, 0], [0, 2], [3, 1], [0, 1], [0, 5], [1, 0], [0, 2]],
        [[1, 0], [0, 1], [0, 4], [5, 0], [0, 3], [2, 0], [1, 0]]], dtype=torch.float32)

    def expert_forward(params, x):  # params is the expert index (as a 1-element tensor)
        return table[int(params[0])][x.view(-1).long()]

    data = PreparedData("toy", ("a", "b"), None, images, train_labels, images[:0], train_labels[:0], images[:0],
                        train_labels[:0])
    finals = torch.tensor([[0.0], [1.0]])
    picked, labels, filled = correct_real_images(data, finals, expert_forward, 2, make_generator(0, "toy"), chunk=2)
    assert filled == {}
    picked_ids = picked.view(-1).long().tolist()
    # correct: image 0 (both), 1 (none), 2 (expert 0), 3 (expert 1); 4 (both), 5 (none), 6 (expert 0)
    assert set(picked_ids[:2]) <= {0, 2, 3} and set(picked_ids[2:]) <= {4, 6}
    means = {0: (table[0][0] + table[1][0]) / 2, 2: table[0][2], 3: table[1][3], 4: (table[0][4] + table[1][4]) / 2,
             6: table[0][6]}
    for row, image in enumerate(picked_ids):
        torch.testing.assert_close(labels[row], means[image])
    picked, labels, filled = correct_real_images(data, finals, expert_forward, 3, make_generator(0, "toy"))
    assert filled == {1: 1}  # class 1 has 2 correct images: the third is image 5, with all experts' mean logits
    assert picked.view(-1).long().tolist()[-1] == 5
    torch.testing.assert_close(labels[-1], (table[0][5] + table[1][5]) / 2)


def datm_config(**distill) -> RunConfig:
    raw = tiny_run_config("datm", 3, (1, 1), select_points=2, **distill).to_dict()
    raw["distill"].update(objective="datm", datm={"lr_label": 2.0, "initial_end": 2, "growth_iterations": 2,
                                                 "update_below": 10.0})
    return RunConfig.from_dict(raw)


def run_to_end(tmp_path, config, name="run", control=None):
    run = RunFolder.create(tmp_path / name, config)
    return run, Distiller(run, tmp_path / "experts", control=control).run()


def test_a_seqmatch_datm_run_learns_soft_labels_and_reports_fair_scores(tmp_path):
    config = datm_config()
    assert config.method == "seqmatch-datm" and config.schedule == "sequential"
    run, result = run_to_end(tmp_path, config)
    subsets = run.subsets()
    assert all(s.labels.shape == (10, 10) and s.labels.is_floating_point() for s in subsets)
    assert set(result) >= {"synthetic", "synthetic_hard", "random_real", "random_real_soft"}
    assert result["method"] == "seqmatch-datm"
    own, hard_only = result["synthetic"]["convnet"], result["synthetic_hard"]["convnet"]
    assert own["values"] != hard_only["values"] or own == hard_only  # other labels, same nets
    assert result["random_real"] != result["random_real_soft"]


def test_kill_and_resume_a_datm_run_gives_the_unbroken_run_bit_for_bit(tmp_path):
    from seqmatch_engine.core.control import RunControl

    config = datm_config()
    unbroken, _ = run_to_end(tmp_path, config, "unbroken")
    control, seen = RunControl(), []

    def stop_in_stage_two(event):
        if event.kind == "iteration" and event.stage == 1 and event.iteration == 3:
            control.stop()

    run = RunFolder.create(tmp_path / "broken", config)
    assert Distiller(run, tmp_path / "experts", stop_in_stage_two, control).run() is None
    checkpoint = run.checkpoint()
    assert checkpoint.stage == 1 and {"labels", "label_momentum"} <= set(checkpoint.state)
    seen.append(checkpoint.iteration)
    Distiller(RunFolder(run.path), tmp_path / "experts").run()
    for a, b in zip(run.subsets(), unbroken.subsets(), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
    assert run.eval().to_dict() == unbroken.eval().to_dict()


def test_objectives_are_registered_once_and_unknown_ones_name_the_field():
    from seqmatch_engine.core.config import OBJECTIVE_CATALOGUE

    assert tuple(OBJECTIVES) == tuple(OBJECTIVE_CATALOGUE)  # every class named in the catalogue, in its order
    for name, method in OBJECTIVES.items():
        assert method.name == name and method.soft_labels == OBJECTIVE_CATALOGUE[name].soft_labels
    raw = tiny_run_config("x", 0, (1,)).to_dict()
    raw["distill"]["objective"] = "dm"
    with pytest.raises(ConfigError, match=r"distill.objective: unknown objective 'dm'; choose one of mtt, datm"):
        RunConfig.from_dict(raw)
    raw["distill"].update(objective="mtt", datm={"lr_label": 3.0})
    with pytest.raises(ConfigError, match=r"distill.datm: is set but distill.objective is not \"datm\""):
        RunConfig.from_dict(raw)
    for method in ("mtt", "seqmatch", "datm", "seqmatch-datm"):
        assert method_name(*method_parts(method)) == method
    static = RunConfig.from_dict({**datm_config().to_dict(), "distill": {
        **datm_config().to_dict()["distill"], "subsets": datm_config().to_dict()["distill"]["subsets"][:1]}})
    assert static.method == "datm" and static.schedule == "static"


def test_a_soft_label_set_keeps_its_labels_through_import_and_export(tmp_path):
    """DATM's code saves images_best.pt and labels_best.pt (logits (n, C)): imported, they stay soft logits (a DATM
    set, ordered by top class), and the export carries them as they are."""
    from safetensors import safe_open

    from seqmatch_engine.orchestration.importer import import_distilled_set

    g = make_generator(0, "import-soft")
    classes = torch.arange(10).repeat(2)  # interleaved, as a public file may hold them
    logits = torch.randn(20, 10, generator=g) + 5 * F.one_hot(classes, 10)
    images = torch.randn(20, 1, 28, 28, generator=g)
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(logits, tmp_path / "labels_best.pt")
    run = import_distilled_set([tmp_path / "images_best.pt", tmp_path / "labels_best.pt"], "fashion-mnist-small",
                               False, tmp_path / "runs")
    assert run.config().method == "datm"
    (subset,) = run.subsets()
    order = torch.argsort(classes, stable=True)
    assert torch.equal(subset.labels, logits[order]) and torch.equal(subset.images, images[order])
    exported = export_set(run, tmp_path / "out").folder
    with safe_open(str(exported / "distilled_set.safetensors"), "pt") as handle:
        assert torch.equal(handle.get_tensor("S1.labels"), logits[order])
    assert (exported / "S1.png").is_file()


def test_what_studies_and_views_call_each_method_comes_from_the_catalogue():
    """Names, labels, colours, the figures' side-by-side shifts and the Distil form's choices are derived from
    config.OBJECTIVE_CATALOGUE, so a new objective needs no edit in the summary or the views."""
    from seqmatch_engine.core.config import METHODS, method_label, sequential_counterparts
    from seqmatch_engine.data.imaging import AGREES, DISAGREES
    from seqmatch_engine.orchestration.study_summary import METHOD_LABELS
    from views.forms import OBJECTIVES as FORM_CHOICES
    from views.palette import METHOD_COLOURS, METHOD_NAMES
    from views.study_figures import SHIFTS

    assert METHODS == ("mtt", "seqmatch", "datm", "seqmatch-datm")
    assert [method_label(m) for m in METHODS] == ["static MTT", "SeqMatch", "DATM", "SeqMatch-DATM"]
    assert sequential_counterparts() == {"mtt": "seqmatch", "datm": "seqmatch-datm"}
    assert all(METHOD_LABELS[m] == METHOD_NAMES[m] == method_label(m) for m in METHODS)
    colours = [METHOD_COLOURS[m] for m in (*METHODS, "random_real", "random_real_soft")]
    assert len(set(colours)) == len(colours) and not {AGREES, DISAGREES} & set(colours)  # one colour per method
    assert [SHIFTS[m] for m in METHODS] == [-1.5, -0.5, 0.5, 1.5]
    assert FORM_CHOICES == {"MTT": "mtt", "DATM (soft labels)": "datm"}


def test_a_static_runs_accuracy_table_names_its_own_method_beside_the_budget():
    """The note under a one-set run's accuracies names that run's method (a DATM run is not 'static MTT')."""
    from seqmatch_engine.storage.records import EvalResult
    from views.render import accuracy_markdown

    for method, row, note in (("mtt", "| static MTT IPC 20 |", "Static MTT under the **per-image**"),
                              ("datm", "| DATM IPC 20 |", "DATM under the **per-image**")):
        result = EvalResult(method=method, ipc=20, lrs=[0.01], eval_epochs=300, num_nets=5, budget="per-image")
        result.add("synthetic", "convnet", {"mean": 0.8, "std": 0.01, "values": [0.8]})
        text = accuracy_markdown(result)
        assert row in text and note in text


def test_datms_lr_best_file_is_read_and_two_lr_files_are_refused(tmp_path):
    """DATM's code saves its learned lr as lr_best.pt (MTT's and SeqMatch's: best_lr.pt)."""
    from seqmatch_engine.orchestration.importer import ImportFailed, import_distilled_set

    torch.save(torch.randn(10, 1, 28, 28), tmp_path / "images_best.pt")
    torch.save(torch.randn(10, 10) + 5 * torch.eye(10), tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0234), tmp_path / "lr_best.pt")
    torch.save(torch.tensor(0.05), tmp_path / "best_lr.pt")
    pair = [tmp_path / "images_best.pt", tmp_path / "labels_best.pt"]
    run = import_distilled_set([*pair, tmp_path / "lr_best.pt"], "fashion-mnist-small", False, tmp_path / "runs")
    assert run.subsets()[0].lr == pytest.approx(0.0234)
    with pytest.raises(ImportFailed, match="both best_lr.pt and lr_best.pt given"):
        import_distilled_set([*pair, tmp_path / "best_lr.pt", tmp_path / "lr_best.pt"], "fashion-mnist-small", False,
                             tmp_path / "runs")


def test_an_exported_soft_label_set_imports_as_the_same_run_and_evaluates_alike(tmp_path):
    """Export, then import the safetensors file: the same subsets bit for bit (soft logits, images, lrs), the same
    config but for its name, and the same evaluation on the same nets."""
    from seqmatch_engine.orchestration.context import RunContext
    from seqmatch_engine.orchestration.driver import evaluate_run
    from seqmatch_engine.orchestration.importer import import_set_files

    run, _ = run_to_end(tmp_path, datm_config())
    exported = export_set(run, tmp_path / "out").folder / "distilled_set.safetensors"
    imported = import_set_files([exported], "cifar10", True, tmp_path / "imported")  # the file names its dataset
    assert imported.status().state == "done" and imported.status().dataset == "fashion-mnist-small"
    for a, b in zip(imported.subsets(), run.subsets(), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
        assert a.labels.shape == (10, 10) and a.labels.is_floating_point()
    config = imported.config()
    assert config.name == "imported-datm" and config.to_dict() == {**run.config().to_dict(), "name": "imported-datm"}
    ctx = RunContext(config, tmp_path / "experts")
    again = evaluate_run(ctx, imported, imported.subsets(), lambda *args, **kwargs: None)
    for key in ("synthetic", "synthetic_hard", "random_real", "random_real_soft"):
        assert again[key] == run.eval().to_dict()[key], key


def test_a_partial_export_imports_as_a_run_of_the_subsets_it_holds(tmp_path):
    from seqmatch_engine.orchestration.importer import import_exported_set

    finished, _ = run_to_end(tmp_path, datm_config())
    stopped = RunFolder.create(tmp_path / "stopped", finished.config())
    stopped.save_transform(finished.transform())
    stopped.save_subset(0, finished.subsets()[0])
    exported = export_set(stopped, tmp_path / "out", partial=True).folder / "distilled_set.safetensors"
    imported = import_exported_set(exported, tmp_path / "imported")
    assert len(imported.config().distill.subsets) == 1 and len(imported.subsets()) == 1
    assert torch.equal(imported.subsets()[0].labels, finished.subsets()[0].labels)
    assert any("partial export: S1-S1 of the run's 2 subsets" in m.text for m in imported.status().messages)


def test_exported_files_that_are_damaged_foreign_or_hostile_are_refused_or_tamed(tmp_path):
    import json

    from safetensors.torch import save_file

    from seqmatch_engine.orchestration.importer import ImportFailed, import_exported_set, import_set_files

    run, _ = run_to_end(tmp_path, datm_config())
    exported = export_set(run, tmp_path / "out").folder / "distilled_set.safetensors"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(exported.read_bytes()[:100])
    with pytest.raises(ImportFailed, match="cut.safetensors is damaged or not a safetensors file"):
        import_exported_set(cut, tmp_path / "imported")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"S1.images": torch.zeros(10, 1, 28, 28)}, str(foreign))
    with pytest.raises(ImportFailed, match="lacks the run config that this tool's exports carry"):
        import_exported_set(foreign, tmp_path / "imported")
    with pytest.raises(ImportFailed, match="import it alone"):
        import_set_files([exported, tmp_path / "images_best.pt"], "fashion-mnist-small", False, tmp_path / "imported")
    from safetensors import safe_open
    with safe_open(str(exported), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    config = json.loads(metadata["config"])
    config["data"].update(root="/etc", download=True)  # a file must not point this machine at its own paths or the net
    hostile = tmp_path / "hostile.safetensors"
    save_file(tensors, str(hostile), metadata={**metadata, "config": json.dumps(config)})
    tamed = import_exported_set(hostile, tmp_path / "imported").config().data
    assert tamed.root is None and tamed.download is False
    short = {**tensors, "S2.labels": tensors["S2.labels"][:5]}
    save_file(short, str(hostile), metadata=metadata)
    with pytest.raises(ImportFailed, match="S2.images has 10 images but hostile.safetensors: S2.labels 5 labels"):
        import_exported_set(hostile, tmp_path / "imported")


def test_g2_to_g4_run_on_a_soft_label_set_with_its_own_labels(tmp_path):
    from seqmatch_engine.orchestration.run_diagnostics import DiagnosticsOptions, RunDiagnostics, compute

    run, _ = run_to_end(tmp_path, datm_config())
    diagnostics = RunDiagnostics(run, tmp_path / "experts", DiagnosticsOptions(experts=1, draws=1, nets=1,
                                                                              reducer="pca", real_per_class=2))
    images, labels, _ = diagnostics.scoring_set(1)
    assert labels.shape == (20, 10) and torch.allclose(labels.sum(1), torch.ones(20))  # probabilities of the logits
    g2, g3, g4 = compute(diagnostics, "g2"), compute(diagnostics, "g3"), compute(diagnostics, "g4")
    assert g2.families and g4.sets["synthetic"].all.mean is not None
    assert g3.label.dtype == torch.int64  # top classes colour the map
