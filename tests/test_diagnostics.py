"""Coupling diagnostics G1-G4: hand-computed cases for the maths, tiny real runs for the plumbing.

The runs are tiny (width-8 nets, 12 real images per class, 2 experts x 3 epochs, 4 outer
iterations per subset) and share one module-scoped home; torch is held to one thread here,
which on a shared 2-core machine is many times faster for nets this small.
"""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from configs import tiny_run_config

from seqmatch_engine.core.config import ConfigError, RunConfig, as_static
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.diagnostics.features import (
    Embedding,
    PointSet,
    checkpoint_epochs,
    joint_embedding,
    pca_2d,
    real_sample,
    umap_2d,
)
from seqmatch_engine.diagnostics.gradients import (
    coupling_index,
    g1_values,
    gradient_similarity,
    mean_off_diagonal,
    nominal_split,
    stage_groups,
)
from seqmatch_engine.diagnostics.hardness import (
    first_correct_epoch,
    hardness,
    masked_accuracy,
    split_easy_hard,
    summarise,
)
from seqmatch_engine.diagnostics.matching_error import late_matching_error, owning_subset
from seqmatch_engine.interfaces import cli
from seqmatch_engine.maths.augment import DSA_OPERATIONS
from seqmatch_engine.maths.matching import draw_unroll_plan, matching_loss
from seqmatch_engine.orchestration.driver import Distiller
from seqmatch_engine.orchestration.run_diagnostics import (
    DiagnosticsOptions,
    RunDiagnostics,
    compute,
    load_embedding,
    overlay_embedding,
    summary,
)
from seqmatch_engine.orchestration.run_diagnostics.g2 import held_out_retrained
from seqmatch_engine.storage import diagnostics_store as store
from seqmatch_engine.storage.diagnostic_records import G1Record
from seqmatch_engine.storage.files import StorageError
from seqmatch_engine.storage.runs import RunError, RunFolder

E1, E2, E3, E4 = torch.eye(4)


def tiny_config(**distill) -> RunConfig:
    return tiny_run_config("diag", 5, (2, 1), **distill)


def grads_of(*rows: torch.Tensor) -> torch.Tensor:
    """Gradients shaped like images (n, 1, 2, 2) from flat 4-vectors."""
    return torch.stack(rows).view(-1, 1, 2, 2)


# -- G1 maths ---------------------------------------------------------------------------------------------
def test_g1_orthogonal_opposite_and_parallel_groups():
    grads = grads_of(2 * E1, 5 * E1,           # group 0, class 0: parallel
                     E2, -E2, E3, 7 * E3,      # group 1: class 0 opposite, class 1 parallel -> mean e3
                     -3 * E1, 0 * E1)          # group 2: -e1, and a zero gradient (left out)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 0, 0])
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2])
    matrix, within = gradient_similarity(grads, labels, groups, 3)
    assert matrix.tolist() == [[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]
    assert within[0] == 1.0 and within[1] == 0.0  # (1 + 1 - 1 - 1) / 4 ordered pairs
    assert math.isnan(within[2])                  # one usable image: no pair


def test_g1_normalises_each_gradient_before_averaging():
    # Raw mean of group 0 is ~e1 (cos ~1 with group 1); after normalising it is (e1 + e2) / 2.
    grads = grads_of(100 * E1, E2, 3 * E1)
    matrix, _ = gradient_similarity(grads, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), 2)
    assert matrix[0, 1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    half = grads_of(E1, (E1 + math.sqrt(3) * E2) / 2)
    matrix, within = gradient_similarity(half, torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert matrix[0, 1].item() == pytest.approx(0.5, abs=1e-7)
    assert torch.isnan(within).all()


def test_g1_values_are_json_ready_with_nulls_for_missing_values():
    matrix, within = g1_values(grads_of(E1, E2), torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert (matrix, within) == ([[1.0, 0.0], [0.0, 1.0]], [None, None])
    assert json.loads(json.dumps(matrix)) == matrix


def test_a_g1_record_file_holds_what_it_always_did_and_a_damaged_one_names_the_fix(tmp_path):
    """g1.jsonl's lines keep their keys and order (runs recorded before the records were typed still read)."""
    record = G1Record(1, 10, ["S1", "S2"], [1, 1], [[1.0, 0.0], [0.0, 1.0]], [None, None], 4, 0.5)
    store.append_g1(tmp_path, record)
    line = (tmp_path / "diagnostics" / "g1.jsonl").read_text()
    assert line == ('{"stage": 1, "iteration": 10, "groups": ["S1", "S2"], "sizes": [1, 1], "matrix": [[1.0, 0.0], '
                    '[0.0, 1.0]], "within": [null, null], "start_epoch": 4, "loss": 0.5}\n')
    assert store.read_g1(tmp_path) == [record]
    (tmp_path / "diagnostics" / "g4.json").write_text('{"method": "mtt"}')
    with pytest.raises(StorageError, match="g4.json is not a diagnostics record this version reads.*compute it again"):
        store.read_g4(tmp_path)
    assert summary(tmp_path)["hard_accuracy_synthetic"] is None


def test_nominal_split_and_stage_groups():
    assert nominal_split(torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]), 2).tolist() == [0, 0, 0, 1, 1] * 2
    assert nominal_split(torch.tensor([0, 0, 1, 1]), 3).tolist() == [0, 1, 0, 1]  # capped at 2 images per class
    groups, names = stage_groups([torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1])], None)
    assert groups.tolist() == [0, 0, 1, 1, 1, 1] and names == ["S1", "S2"]
    groups, names = stage_groups([torch.tensor([0, 0, 0, 1, 1, 1])], 3)
    assert groups.tolist() == [0, 1, 2, 0, 1, 2] and names == ["N1", "N2", "N3"]


def test_coupling_index_averages_the_last_fifth_of_multi_group_records():
    def record(value, k=2):
        return [[1.0 if a == b else value for b in range(k)] for a in range(k)]

    records = [record(0.9, 1), record(0.9, 1)] + [record(v) for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)]
    assert coupling_index(records) == pytest.approx(0.75)  # ceil(0.2 * 8) = 2 records: 0.7, 0.8
    assert coupling_index(records[:2]) is None              # only 1 x 1 matrices
    assert mean_off_diagonal([[1, 0.2, None], [0.2, 1, 0.5], [None, 0.5, 1]]) == pytest.approx(0.35)
    assert coupling_index([record(0.3, 3)]) == pytest.approx(0.3)


def test_diagnose_every_is_validated():
    with pytest.raises(ConfigError, match="distill.diagnose_every"):
        tiny_config(diagnose_every=-1)
    with pytest.raises(ConfigError, match="distill.nominal_groups"):
        tiny_config(nominal_groups=0)
    assert RunConfig().distill.diagnose_every == 0


# -- tiny real runs ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("diag-home")
    runs = {}
    for name, config in (("recorded", tiny_config(diagnose_every=1)), ("plain", tiny_config()),
                         ("mtt", as_static(tiny_config(diagnose_every=2), "total"))):
        run = RunFolder.create(home / "runs", config)
        Distiller(run, home / "experts").run()
        runs[name] = run
    return home, runs


def test_recording_g1_does_not_change_the_learned_images(home):
    _, runs = home
    recorded, plain = runs["recorded"].subsets(), runs["plain"].subsets()
    for a, b in zip(recorded, plain, strict=True):
        assert torch.equal(a.images, b.images) and a.lr == b.lr
    records = store.read_g1(runs["recorded"].path)
    assert [(r.stage, r.iteration) for r in records] == [(s, i) for s in (0, 1) for i in range(1, 5)]
    assert records[0].groups == ["S1"] and records[-1].groups == ["S1", "S2"]
    assert records[-1].sizes == [20, 10]
    assert store.read_g1(runs["plain"].path) == []


def test_static_mtt_records_nominal_groups(home):
    _, runs = home
    records = store.read_g1(runs["mtt"].path)
    assert [r.iteration for r in records] == [2, 4, 6, 8]
    assert all(r.groups == ["N1", "N2"] and r.sizes == [20, 10] for r in records)
    assert coupling_index([r.matrix for r in records]) == pytest.approx(records[-1].matrix[0][1])  # ceil(0.2 * 4) = 1 record


def test_resumed_stage_does_not_duplicate_g1_records(home, tmp_path):
    home_dir, runs = home
    config = tiny_config(diagnose_every=1)

    class Killed(Exception):
        pass

    def kill(event):
        if event.kind == "iteration" and event.stage == 1 and event.iteration == 3:
            raise Killed()

    run = RunFolder.create(tmp_path, config)
    with pytest.raises(Killed):
        Distiller(run, home_dir / "experts", kill).run()
    assert store.read_g1(run.path)[-1].iteration == 3  # recorded past the checkpoint at iteration 2
    Distiller(RunFolder(run.path), home_dir / "experts").run()
    assert store.read_g1(run.path) == store.read_g1(runs["recorded"].path)


# -- G2 ---------------------------------------------------------------------------------------------------
def test_owning_subset_rule():
    windows = [(0, 10), (10, 20), (20, 30)]
    assert [owning_subset(t, windows) for t in (0, 9, 10, 25, 35)] == [0, 0, 1, 2, 2]
    overlapping = [(0, 8), (0, 6)]
    assert [owning_subset(t, overlapping) for t in (3, 7, 9)] == [1, 0, 0]
    assert owning_subset(8, [(0, 6), (10, 12)]) == 1  # equally near (2 epochs): the later subset
    assert late_matching_error({"mean": [1, 2, 3, 4, 5, 6, 7, 8]}) == 7.5


@pytest.fixture(scope="module")
def diagnosed(home):
    """G2-G4 of the recorded SeqMatch run with 1 held-out expert, 1 draw, 1 net, PCA."""
    home_dir, runs = home
    diagnostics = RunDiagnostics(runs["recorded"], home_dir / "experts",
                                 DiagnosticsOptions(experts=2, draws=1, nets=1, reducer="pca", real_per_class=3))
    return diagnostics, compute(diagnostics, "g2"), compute(diagnostics, "g3"), compute(diagnostics, "g4")


def expected_curve(diagnostics, family, experts, images, labels, lr, batch):
    """L(t) per held-out expert, computed directly from matching_loss with the plans G2 must use."""
    config, data = diagnostics.config, diagnostics.data
    curve = []
    for e in range(len(experts)):
        row = []
        for t in range(experts.shape[1] - 1):
            plan = draw_unroll_plan(make_generator(config.seed, "g2", family, e, t, 0), len(labels), batch, 3,
                                    data.image_size, DSA_OPERATIONS)
            row.append(float(matching_loss(diagnostics.forward, experts[e, t], experts[e, t + 1], images, labels,
                                           torch.tensor(lr), plan).detach()))
        curve.append(row)
    return curve


def test_g2_scores_each_subset_on_the_trajectories_it_was_learned_against(diagnosed):
    """SeqMatch (S1: 2/class, S2: 1/class, retrained experts): family 1 (stage-1 experts) is scored with
    U_1 = S1 and alpha_1 on batches of 20; family 2 (pre-trained on S1, then real data) with U_2 and alpha_2
    on batches of 10, as while S2 was learned."""
    diagnostics, g2, _, _ = diagnosed
    s1, s2 = diagnostics.subsets
    assert [f.family for f in g2.families] == [1, 2] and g2.version == 2
    one, two = g2.families
    assert one.subset == [0, 0, 0] and two.subset == [1, 1, 1] and two.source_run == diagnostics.run.id
    torch.testing.assert_close(torch.tensor(one.per_expert), torch.tensor(expected_curve(
        diagnostics, 0, diagnostics.held_out_experts(), s1.images, s1.labels, s1.lr, 20)), rtol=1e-6, atol=0)
    retrained = held_out_retrained(diagnostics, 1, diagnostics.subsets)
    union = torch.cat([s1.images, s2.images]), torch.cat([s1.labels, s2.labels])
    torch.testing.assert_close(torch.tensor(two.per_expert),
                               torch.tensor(expected_curve(diagnostics, 1, retrained, *union, s2.lr, 10)), rtol=1e-6, atol=0)
    assert two.mean[0] == pytest.approx(sum(row[0] for row in two.per_expert) / 2, rel=1e-9)
    assert store.read_g2(diagnostics.run.path) == g2


def test_g2_of_static_mtt_uses_its_whole_set_on_the_partners_families(home, diagnosed, tmp_path):
    home_dir, runs = home
    seqmatch, _, _, _ = diagnosed
    copy = RunFolder(shutil.copytree(runs["mtt"].path, tmp_path / runs["mtt"].id))  # the module's run stays as it was
    static = RunDiagnostics(copy, home_dir / "experts", DiagnosticsOptions(experts=2, draws=1))
    alone = compute(static, "g2")
    assert [f.family for f in alone.families] == [1]  # no partner: stage-1 experts only
    paired = compute(static, "g2", partner=runs["recorded"])
    assert [f.family for f in paired.families] == [1, 2] and paired.families[1].subset == [0, 0, 0]
    (learned,) = static.subsets
    retrained = held_out_retrained(seqmatch, 1, seqmatch.subsets)  # the partner's family 2, from the same cache
    torch.testing.assert_close(held_out_retrained(static, 1, seqmatch.subsets), retrained)
    torch.testing.assert_close(torch.tensor(paired.families[1].per_expert), torch.tensor(
        expected_curve(static, 1, retrained, learned.images, learned.labels, learned.lr, 30)), rtol=1e-6, atol=0)
    with pytest.raises(RunError, match="not a SeqMatch run"):
        compute(static, "g2", partner=copy)


def test_held_out_experts_are_not_the_distillation_experts(diagnosed):
    diagnostics, _, _, _ = diagnosed
    held_out = diagnostics.held_out_experts()
    recipe = diagnostics.ctx.stage1_recipe()
    distillation = diagnostics.ctx.cached_stage1_experts()
    assert held_out.shape == distillation.shape
    assert not torch.equal(held_out[0], distillation[0])
    assert diagnostics.cache.folder(diagnostics.held_out_recipe()) != diagnostics.cache.folder(recipe)


# -- G3 ---------------------------------------------------------------------------------------------------
def test_g3_has_one_row_per_epoch_and_point_and_is_reproducible(diagnosed):
    diagnostics, _, embedding, _ = diagnosed
    n_points = 3 * 10 + 30  # real sample + S1 (20) + S2 (10)
    assert embedding.epochs == [0, 2, 3] == checkpoint_epochs(3, 3)
    assert embedding.coords.shape == (3 * n_points, 2)
    assert embedding.epoch.tolist() == [0] * n_points + [2] * n_points + [3] * n_points
    assert embedding.point.tolist() == list(range(n_points)) * 3
    assert embedding.kinds == ["real"] * 30 + ["S1"] * 20 + ["S2"] * 10
    again = compute(diagnostics, "g3")
    assert torch.equal(again.coords, embedding.coords)
    cached = load_embedding(diagnostics.run.path)
    assert torch.equal(cached.coords, embedding.coords) and cached.kinds == embedding.kinds
    data = diagnostics.data
    other = real_sample(data.train_images, data.train_labels, 10, 3, seed=6)
    assert not torch.equal(other.images, diagnostics.points().images[:30])


def test_overlay_embedding_of_two_runs_shares_the_real_sample(home, diagnosed):
    home_dir, runs = home
    first, _, _, _ = diagnosed
    mtt = RunDiagnostics(runs["mtt"], home_dir / "experts", first.options, data=first.data)
    overlay = overlay_embedding([first, mtt], ["SeqMatch", "MTT"], reducer="pca")
    assert overlay.kinds == ["real"] * 30 + ["S1"] * 20 + ["S2"] * 10 + ["S1"] * 30
    assert overlay.sources == ["real"] * 30 + ["SeqMatch"] * 30 + ["MTT"] * 30
    assert overlay.coords.shape == (3 * 90, 2)
    assert torch.equal(overlay.label[:30], first.points().labels[:30])


def test_pca_of_points_on_a_line_and_joint_embedding_rows():
    t = torch.linspace(-1, 1, 7)
    rows = torch.stack([t, 2 * t, -t], 1)
    coords = pca_2d(rows)
    assert coords[:, 1].abs().max() < 1e-6
    torch.testing.assert_close(coords[:, 0].abs(), (t * math.sqrt(6)).abs(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pca_2d(-rows).abs(), coords.abs())


@pytest.mark.slow
@pytest.mark.umap
def test_umap_reducer_smoke():
    rows = torch.randn(40, 6, generator=make_generator(0, "umap-test"))
    a, b = umap_2d(rows, seed=1), umap_2d(rows, seed=1)
    assert a.shape == (40, 2) and torch.isfinite(a).all() and torch.equal(a, b)
    assert torch.get_num_threads() == 1  # umap-learn resets torch's thread count; umap_2d restores it


def test_joint_embedding_rejects_unknown_reducer():
    from seqmatch_engine.maths.models import ConvNetSpec

    spec = ConvNetSpec(1, (4, 4), 2, 2, 1)
    points = PointSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ["real", "S1"], ["real", "mtt"])
    with pytest.raises(ValueError, match="unknown reducer 'tsne'"):
        joint_embedding(torch.zeros(2, spec.num_params), [0, 1], points, spec, "tsne", 0, ["a", "b"])
    with pytest.raises(ValueError, match="inconsistent"):
        Embedding.from_parts({"coords": torch.zeros(3, 2), "epoch": torch.zeros(3), "point": torch.zeros(3),
                              "label": torch.zeros(3)}, {"rows": 4})


# -- G4 ---------------------------------------------------------------------------------------------------
def test_g4_hardness_by_hand():
    # correct[e, t, i]: 2 experts, epochs 0..2, 4 test images
    correct = torch.tensor([
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]],   # expert 0: first correct 0, 1, 2, never (3)
        [[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]],   # expert 1: first correct 1, 1, never, never
    ], dtype=torch.bool)
    assert first_correct_epoch(correct).tolist() == [[0, 1, 2, 3], [1, 1, 3, 3]]
    h = hardness(correct)
    assert h.tolist() == [0.5, 1.0, 2.5, 3.0]
    easy, hard, threshold = split_easy_hard(h)
    assert threshold == 1.0 and easy.tolist() == [True, True, False, False]
    assert hard.tolist() == [False, False, True, True]
    predictions, labels = torch.tensor([1, 0, 2, 3]), torch.tensor([1, 1, 2, 0])
    assert masked_accuracy(predictions, labels, easy) == 0.5 and masked_accuracy(predictions, labels, hard) == 0.5
    assert masked_accuracy(predictions, labels, torch.zeros(4, dtype=torch.bool)) is None
    # More than half never learned (h = 3 = E + 1): the median is the maximum, so ties go to the hard side.
    easy, hard, threshold = split_easy_hard(torch.tensor([0.5, 3.0, 3.0, 3.0]))
    assert threshold == 3.0 and easy.tolist() == [True, False, False, False]
    easy, hard, _ = split_easy_hard(torch.tensor([2.0, 2.0]))
    assert not easy.any() and hard.all()
    assert summarise([0.5, 0.7]) == (pytest.approx(0.6), pytest.approx(0.02 ** 0.5), [0.5, 0.7])
    assert summarise([0.5, None])[:2] == (None, None)


def test_g4_uses_the_runs_own_evaluation_nets(diagnosed):
    diagnostics, _, _, g4 = diagnosed
    evaluation = diagnostics.run.eval().to_dict()
    assert g4.sets["synthetic"].all.values == [evaluation["synthetic"]["convnet"]["values"][0]]
    assert g4.sets["random_real"].all.values == [evaluation["random_real"]["convnet"]["values"][0]]
    assert g4.easy_count + g4.hard_count == len(g4.hardness) == 10000
    assert g4.threshold == float(torch.tensor(g4.hardness).median())
    for name in ("synthetic", "random_real"):
        part = g4.sets[name]
        total = (part.easy.mean * g4.easy_count + part.hard.mean * g4.hard_count) / 10000
        assert total == pytest.approx(part.all.mean)
    assert store.read_g4(diagnostics.run.path) == g4


def test_summary_collects_g1_g2_g4(diagnosed):
    diagnostics, g2, _, g4 = diagnosed
    values = summary(diagnostics.run.path)
    assert values["coupling_index"] == coupling_index([r.matrix for r in store.read_g1(diagnostics.run.path)])
    assert values["late_matching_error"] == [f.mean[-1] for f in g2.families]  # ceil(0.25 * 3) = 1 epoch
    assert values["hard_accuracy_synthetic"] == g4.sets["synthetic"].hard.mean


# -- CLI ---------------------------------------------------------------------------------------------------
def test_cli_diagnose_computes_what_is_missing(home, capsys):
    home_dir, runs = home
    path = str(runs["mtt"].path)
    args = ["--home", str(home_dir), "diagnose", path, "--reducer", "pca", "--experts", "1", "--draws", "1",
            "--nets", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "computed g2, g3, g4" in out and "coupling index (G1)" in out and "hard-image accuracy" in out
    assert store.read_g3(runs["mtt"].path)[1]["reducer"] == "pca"
    assert cli.main(args + ["--only", "g2"]) == 0
    assert "computed nothing; already there: g2" in capsys.readouterr().out


def test_cli_diagnose_reports_missing_g1_and_unfinished_runs(home, tmp_path, capsys):
    home_dir, runs = home
    assert cli.main(["--home", str(home_dir), "diagnose", str(runs["plain"].path), "--only", "g1"]) == 0
    captured = capsys.readouterr()
    assert "G1: no records" in captured.err and "coupling index (G1)          n/a" in captured.out
    unfinished = RunFolder.create(tmp_path / "runs", tiny_config())
    assert cli.main(["--home", str(tmp_path), "diagnose", str(unfinished.path), "--only", "g2"]) == 2
    assert "has 0 of 2 subsets; finish it first" in capsys.readouterr().err
    with pytest.raises(RunError):
        RunDiagnostics(unfinished, home_dir / "experts")


def test_a_new_diagnostic_is_one_registry_entry(home, capsys, monkeypatch):
    """A diagnostic declared once (here a toy G5 counting the set's images) is computed, found lacking,
    summarised and offered by the CLI without another change."""
    from seqmatch_engine.orchestration import run_diagnostics
    from seqmatch_engine.orchestration.run_diagnostics import DIAGNOSTICS, Diagnostic, format_summary, missing

    home_dir, runs = home
    run = runs["mtt"]
    written = {}

    def compute_g5(diagnostics, progress=None, partner=None):
        written[diagnostics.run.path] = sum(len(s.images) for s in diagnostics.subsets)
        return written[diagnostics.run.path]

    g5 = Diagnostic("g5", "G5 image count", compute_g5, lambda run_dir, reducer, partner: run_dir not in written,
                    lambda run_dir: {"images": written.get(run_dir)},
                    lambda values: [f"images (G5)                  {values['images']}"])
    monkeypatch.setitem(DIAGNOSTICS, "g5", g5)
    assert "g5" in missing(run.path)
    count = sum(len(s.images) for s in run.subsets())
    assert run_diagnostics.compute(RunDiagnostics(run, home_dir / "experts"), "g5") == count
    assert "g5" not in missing(run.path)
    assert f"images (G5)                  {count}" in format_summary(summary(run.path))
    assert cli.main(["--home", str(home_dir), "diagnose", str(run.path), "--only", "g5"]) == 0
    assert "already there: g5" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown diagnostic 'g1'; choose from g2, g3, g4, g5"):
        run_diagnostics.compute(RunDiagnostics(run, home_dir / "experts"), "g1")
