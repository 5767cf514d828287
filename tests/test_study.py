"""Studies: a grid of tiny runs, paired by seed, resumable, summarised from the runs' own files."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
from configs import tiny_run_config

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import ConfigError, selection_iterations
from seqmatch_engine.core.study_spec import Cell, StudySpec, load_study_spec, run_id, study_preset_names
from seqmatch_engine.interfaces import cli
from seqmatch_engine.orchestration.driver import Event, EventKind, RunControl, StopRequested
from seqmatch_engine.orchestration.study import finished_twin, run_study
from seqmatch_engine.orchestration.study_summary import METHOD_LABELS, chooser, format_table, summarise
from seqmatch_engine.storage.expert_cache import ExpertCache
from seqmatch_engine.storage.files import StorageError
from seqmatch_engine.storage.records import RunState
from seqmatch_engine.storage.study_folder import StudyFolder


def tiny_spec(**changes) -> StudySpec:
    base = tiny_run_config("base", 0, (1, 1), diagnose_every=2).to_dict()
    base["eval"]["num_nets"] = 2
    raw = {"name": "tiny", "config": base, "grid": [{"ipc": 2, "subsets": 2}], "seeds": [0, 1],
           "methods": ["mtt", "seqmatch"], "budget": "per-image", **changes}
    return StudySpec.from_dict(raw)


@dataclasses.dataclass
class Seen:
    """What the tiny study's caller saw: the runs as they started, the driver's and the study's events, and what the
    study's status named as its controls in progress when each phase began."""
    study: StudyFolder
    started: list[str] = dataclasses.field(default_factory=list)
    events: list[Event] = dataclasses.field(default_factory=list)
    controls_at_phase: dict[str, str | None] = dataclasses.field(default_factory=dict)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.kind == EventKind.PHASE:
            self.controls_at_phase[event.data["name"]] = self.study.status().controls


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    home = tmp_path_factory.mktemp("study-home")
    study = StudyFolder.create_or_open(paths.studies_root(home), tiny_spec())
    seen = Seen(study)
    summary = run_study(study, paths.experts_root(home), seen, on_run=lambda rid, i, n: seen.started.append(rid))
    return home, study, summary, seen


def test_the_grid_expands_to_paired_configs():
    spec = tiny_spec(budget="total")
    cell = Cell(2, 2)
    seq, mtt = spec.run_config(cell, 1, "seqmatch"), spec.run_config(cell, 1, "mtt")
    assert [s.ipc for s in seq.distill.subsets] == [1, 1] and mtt.distill.subsets[0].ipc == 2
    assert seq.seed == mtt.seed == 1 and mtt.budget == "total" and seq.budget is None
    assert mtt.distill.subsets[0].iterations == 8  # total: 4 + 4
    assert tiny_spec().run_config(cell, 1, "mtt").distill.subsets[0].iterations == 4  # per-image
    assert (seq.data, seq.model, seq.experts, seq.eval) == (mtt.data, mtt.model, mtt.experts, mtt.eval)
    assert [p.id for p in spec.plan()] == ["ipc002-k2-mtt-seed0", "ipc002-k2-seqmatch-seed0",
                                                 "ipc002-k2-mtt-seed1", "ipc002-k2-seqmatch-seed1"]


@pytest.mark.parametrize("change, message", [
    ({"grid": []}, "study.grid: needs at least one cell"),
    ({"grid": [{"ipc": 1, "subsets": 2}]}, "IPC 1 cannot be split into 2 subsets"),
    ({"grid": [{"ipc": 4, "subsets": 1}]}, "seqmatch needs at least 2 subsets"),
    ({"seeds": [0, 0]}, "study.seeds: needs distinct whole numbers"),
    ({"methods": ["dm"]}, "study.methods: distinct names from mtt, seqmatch"),
    ({"budget": "half"}, "study.budget: must be one of per-image, total"),
    ({"name": "../x"}, "study.name"),
    ({"colour": "red"}, "study.colour: unknown setting"),
    ({"preset": "cpu-demo"}, "exactly one of preset"),
    ({"grid": [{"ipc": 20, "subsets": 2}]},
     "study.grid[0] (mtt, seed 0): ipc 20 needs data.train_per_class >= 20 (the base config has 12)"),
])
def test_bad_specs_name_the_field(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_spec(**change)


def test_the_base_config_of_a_spec_is_named_as_the_spec_writes_it():
    base = tiny_run_config("base", 0, (1, 1)).to_dict()
    for change, message in ((("distill", "syn_stepz", 3), "study.config.distill.syn_stepz: unknown setting; known"),
                            (("distill", "syn_steps", 2.7), "study.config.distill.syn_steps: expected a whole number, "
                                                            "got 2.7"),
                            (("model", "width", "8"), 'study.config.model.width: expected a whole number, got "8"'),
                            (("eval", "num_nets", True), "study.config.eval.num_nets: expected a whole number, got true")):
        group, key, value = change
        raw = json.loads(json.dumps(base))
        raw[group][key] = value
        with pytest.raises(ConfigError) as info:
            tiny_spec(config=raw)
        assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ConfigError) as info:
        StudySpec.from_dict({"name": "p", "preset": "cpu-smoke", "overrides": ["distill.syn_steps=2.7"],
                             "grid": [{"ipc": 2, "subsets": 2}]})
    assert str(info.value) == ("study (preset 'cpu-smoke' + study.overrides): distill.syn_steps: expected a whole "
                               "number, got 2.7")


def test_study_runs_every_cell_and_pairs_by_seed(finished):
    home, study, summary, seen = finished
    assert seen.started == [p.id for p in study.spec().plan()]
    assert summary["runs_done"] == summary["runs_total"] == 4
    # both methods of a seed trained against the same cached stage-1 experts: one recipe folder per seed
    # for stage 1, plus one per SeqMatch run for its retrained stage-2 experts
    recipes = [json.loads((p / "recipe.json").read_text()) for p in paths.experts_root(home).iterdir()
               if (p / "recipe.json").is_file()]
    assert sorted(r["seed"] for r in recipes if r["stage"] == 0) == [0, 1]
    assert sorted(r["seed"] for r in recipes if r["stage"] == 1) == [0, 1]
    for seed in (0, 1):
        runs = {m: study.run(run_id(Cell(2, 2), seed, m)) for m in ("mtt", "seqmatch")}
        results = {m: run.eval().to_dict() for m, run in runs.items()}
        # the random-real baseline is measured once per seed and shared
        assert results["mtt"]["random_real"] == results["seqmatch"]["random_real"]
        assert results["mtt"]["budget"] == "per-image" and results["seqmatch"]["budget"] is None
        assert runs["mtt"].config().distill.nominal_groups == 2
    seeds = sorted(int(s) for s in study.expert_accuracy())
    assert seeds == [0, 1] and all(len(v) == 2 for v in study.expert_accuracy().values())


def test_summary_numbers_are_the_runs_eval_values(finished):
    _, study, summary, _ = finished
    (row,) = summary["cells"]
    for method in ("mtt", "seqmatch"):
        values = [study.run(run_id(Cell(2, 2), s, method)).eval().accuracy()["mean"] for s in (0, 1)]
        acc = row["methods"][method]["accuracy"]
        assert acc["values"] == values
        assert acc["mean"] == pytest.approx(sum(values) / 2)
        assert acc["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)  # sample std of two values
        assert row["methods"][method]["coupling"]["n"] == 2
    differences = [study.run(run_id(Cell(2, 2), s, "seqmatch")).eval().accuracy()["mean"]
                   - study.run(run_id(Cell(2, 2), s, "mtt")).eval().accuracy()["mean"] for s in (0, 1)]
    assert row["paired"]["values"] == pytest.approx(differences) and row["paired"]["seeds"] == [0, 1]
    row_controls = row["methods"]["seqmatch"]["controls"]
    assert set(row_controls) == {"first_subset_alone", "one_stage", "random_last"}
    controls = study.run(run_id(Cell(2, 2), 0, "seqmatch")).controls()["accuracy"]
    assert row_controls["one_stage"]["values"][0] == controls["one_stage"]["mean"]
    table = format_table(summary)
    assert "budget convention **per-image**" in table and "4/4 runs done" in table
    assert f"{100 * row['paired']['mean']:+.2f} ± {100 * row['paired']['std']:.2f} (n=2)" in table
    low, high = row["paired"]["ci95"]
    assert low <= row["paired"]["mean"] <= high and row["paired"]["above"] == sum(d > 0 for d in differences)
    per_seed = ", ".join(f"{seed}: {100 * d:+.2f}" for seed, d in zip((0, 1), differences))
    assert f"| SeqMatch − static MTT | {per_seed} |" in table
    assert f"| {100 * low:+.2f} to {100 * high:+.2f} | {row['paired']['above']} of 2 |" in table
    assert (study.path / paths.STUDY_TABLE_FILE).read_text() == table
    experts = [v for values in study.expert_accuracy().values() for v in values]
    assert row["headroom"] == pytest.approx(sum(experts) / len(experts) - row["methods"]["mtt"]["accuracy"]["mean"])
    assert f"| {100 * row['headroom']:.1f} |" in table
    assert study.status().state == "done"


def test_the_controls_are_a_phase_with_a_bar_per_control_not_silent_minutes(finished):
    """After each SeqMatch run the study trains its controls' evaluation nets (minutes at real sizes): the observer
    (the CLI's bars, the app's card) sees them as a phase with progress, and the study's status says so meanwhile."""
    _, study, _, seen = finished
    events = seen.events
    phases = [e.data["name"] for e in events if e.kind == EventKind.PHASE]
    for seed in (0, 1):
        seqmatch = run_id(Cell(2, 2), seed, "seqmatch")
        at = phases.index(f"controls of {seqmatch}")
        assert phases[at - 1] == "evaluating" and phases[at + 1:at + 2] in ([], ["loading data"])
        assert seen.controls_at_phase[f"controls of {seqmatch}"] == seqmatch  # what the Studies tab reads meanwhile
    last = {}
    for event in events:
        if event.kind == EventKind.PROGRESS and event.data["task"].startswith("control: "):
            last[event.data["task"]] = (event.data["done"], event.data["total"])
    assert set(last) == {"control: first_subset_alone", "control: one_stage", "control: random_last"}
    assert all(done == total > 0 for done, total in last.values())
    assert study.status().controls is None and seen.controls_at_phase["evaluating"] is None


def test_a_study_stopped_during_controls_names_none_and_resumes_them(tmp_path):
    study = StudyFolder.create_or_open(paths.studies_root(tmp_path), tiny_spec(seeds=[0]))
    control = RunControl()

    def stop_at_controls(event: Event) -> None:
        if event.kind == EventKind.PHASE and event.data["name"].startswith("controls of"):
            control.stop()

    with pytest.raises(StopRequested):
        run_study(study, paths.experts_root(tmp_path), stop_at_controls, control)
    seqmatch = study.run(run_id(Cell(2, 2), 0, "seqmatch"))
    assert study.status().state == RunState.STOPPED and study.status().controls is None
    assert seqmatch.eval() is not None and seqmatch.controls() is None
    run_study(study, paths.experts_root(tmp_path))
    assert set(seqmatch.controls()["accuracy"]) == {"first_subset_alone", "one_stage", "random_last"}


def test_a_study_measuring_controls_says_so_on_its_card(tmp_path):
    from seqmatch_engine.interfaces.queries import Library
    from views.studies_tab import study_status_html

    study = StudyFolder.create_or_open(paths.studies_root(tmp_path), tiny_spec())
    study.update_status(state=RunState.RUNNING, total=4, done=2, current="ipc002-k2-seqmatch-seed0",
                        controls="ipc002-k2-seqmatch-seed0")
    card = study_status_html(Library(tmp_path).study(study.id), None)
    assert "2/4 runs done · now the evaluation-only controls of ipc002-k2-seqmatch-seed0" in card


def test_another_evaluation_of_a_study_run_leaves_the_summary_on_the_runs_own(finished, tmp_path):
    import shutil

    from seqmatch_engine.core.config import RunConfig
    from seqmatch_engine.orchestration.context import RunContext
    from seqmatch_engine.orchestration.driver import evaluate_run

    home, study, summary, _ = finished
    copy = StudyFolder(shutil.copytree(study.path, tmp_path / "study"))
    run = copy.run(run_id(Cell(2, 2), 0, "seqmatch"))
    own = (run.path / paths.EVAL_FILE).read_bytes()
    config = run.config().to_dict()
    config["eval"]["epochs"] = 4  # the run's own: 2
    ctx = RunContext(RunConfig.from_dict(config), paths.experts_root(home))
    other = evaluate_run(ctx, run, run.subsets(), lambda *a, **k: None, name="epochs4")
    assert (run.path / paths.EVAL_FILE).read_bytes() == own and run.evaluations()["epochs4"].eval_epochs == 4
    assert other["synthetic"] != run.eval().to_dict()["synthetic"]  # a different measurement...
    assert summarise(copy)["cells"] == summary["cells"]  # ...that the summary never reads


def test_resume_skips_finished_runs_and_finishes_interrupted_ones(finished, tmp_path, monkeypatch):
    import shutil

    home, study, summary, _ = finished
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    again = StudyFolder.create_or_open(paths.studies_root(copy), study.spec())
    # forget the last run's result: it is redone, the others are only read
    last = again.run(run_id(Cell(2, 2), 1, "seqmatch"))
    before = {rid: (again.run(rid).path / "eval.json").stat().st_mtime_ns for rid in (p.id for p in study.spec().plan())}
    (last.path / "eval.json").unlink()
    last.update_status(state="running")
    trained = []
    monkeypatch.setattr(ExpertCache, "save", lambda self, recipe, i, trajectory: trained.append(i))
    resumed = run_study(again, paths.experts_root(copy))
    assert trained == []  # every expert came from the cache
    for rid in [p.id for p in study.spec().plan()][:-1]:
        assert (again.run(rid).path / "eval.json").stat().st_mtime_ns == before[rid]
    assert resumed["cells"][0]["methods"]["seqmatch"]["accuracy"]["values"] == \
        summary["cells"][0]["methods"]["seqmatch"]["accuracy"]["values"]


def test_a_stopped_study_says_so_and_resumes(tmp_path):
    spec = tiny_spec(seeds=[3], controls=False)
    study = StudyFolder.create_or_open(paths.studies_root(tmp_path), spec)
    control = RunControl()
    control.stop()
    with pytest.raises(StopRequested):
        run_study(study, paths.experts_root(tmp_path), control=control)
    assert study.status().state == "stopped"
    summary = run_study(study, paths.experts_root(tmp_path))
    assert summary["runs_done"] == 2 and study.status().state == "done"


def test_a_changed_spec_is_refused(tmp_path):
    StudyFolder.create_or_open(paths.studies_root(tmp_path), tiny_spec())
    with pytest.raises(ConfigError, match="exists .* with another spec"):
        StudyFolder.create_or_open(paths.studies_root(tmp_path), tiny_spec(seeds=[0, 1, 2]))


def test_study_presets_load_and_validate():
    assert study_preset_names()
    for name in study_preset_names():
        spec = load_study_spec(name)
        assert spec.budget == "per-image" and len(spec.seeds) >= 3 and {"mtt", "seqmatch"} <= set(spec.methods)


def test_the_soft_label_study_gives_mtt_the_runs_of_the_hard_label_preset():
    """The four-method study's base is the DATM preset; its MTT and SeqMatch runs must be the plain preset's, so that
    the four are compared under one protocol and DATM's settings reach DATM's runs only."""
    spec = load_study_spec("soft-labels")
    assert set(spec.methods) == {"mtt", "seqmatch", "datm", "seqmatch-datm"} and spec.run_count() == 20  # 12 tuning + 8
    cell = spec.grid[0]
    plain = StudySpec.from_dict({**spec.to_dict(), "preset": "fashion-ipc20", "name": "plain"})
    for method in ("mtt", "seqmatch"):
        ours, theirs = spec.run_config(cell, 1, method, 300.0).to_dict(), plain.run_config(cell, 1, method, 300.0).to_dict()
        assert {**ours, "name": None} == {**theirs, "name": None}
    datm = spec.run_config(cell, 1, "seqmatch-datm", 100.0)
    assert datm.distill.objective == "datm" and datm.distill.datm.lr_label == 2.0 and len(datm.distill.subsets) == 2


def test_cli_study_summary_and_errors(finished, tmp_path, capsys):
    home, study, summary, _ = finished
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps(study.spec().to_dict()))
    assert cli.main(["--home", str(home), "study", str(spec_file), "--summary"]) == 0
    captured = capsys.readouterr()
    assert captured.out == format_table(summarise(study)) + "\n"
    assert "budget convention: per-image" in captured.err
    assert cli.main(["--home", str(tmp_path), "study", str(tmp_path / "missing.json")]) == 2
    assert "neither a study preset" in capsys.readouterr().err
    assert cli.main(["--home", str(tmp_path), "study"]) == 2
    assert "give a spec file or --preset" in capsys.readouterr().err


def test_a_study_copies_another_studys_finished_twins_and_runs_only_the_rest(finished, tmp_path, capsys):
    import shutil

    home, study, _, _ = finished
    shutil.copytree(home, tmp_path / "home")
    shutil.rmtree(paths.experts_root(tmp_path / "home"))  # another machine: the source's experts are not cached
    root = paths.studies_root(tmp_path / "home")
    source = StudyFolder.find(root, study.id)
    spec = tiny_spec(name="tiny-more", seeds=[1, 2])
    spec_file = tmp_path / "more.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    assert cli.main(["--home", str(tmp_path / "home"), "study", str(spec_file), "--reuse", study.id]) == 0
    err = capsys.readouterr().err
    other = StudyFolder.find(root, "tiny-more")
    for method in ("mtt", "seqmatch"):
        copied, original = other.run(run_id(Cell(2, 2), 1, method)), source.run(run_id(Cell(2, 2), 1, method))
        assert copied.origin() == str(original.path.resolve())
        assert f"{copied.id} (copied from {original.path.resolve()})" in err
        for name in ("eval.json", "metrics.jsonl", "subsets/S1.safetensors"):
            assert (copied.path / name).read_bytes() == (original.path / name).read_bytes(), name
        assert copied.config().name == spec.run_config(Cell(2, 2), 1, method).name != original.config().name
        assert other.run(run_id(Cell(2, 2), 2, method)).origin() is None  # seed 2 ran here
        assert other.run(run_id(Cell(2, 2), 2, method)).eval() is not None
    assert other.expert_accuracy()["1"] == source.expert_accuracy()["1"]  # seed 1's experts were never needed here
    # a study stopped after copying a run but before recording its seed (as the old code failed) goes on too
    (other.path / paths.STUDY_EXPERTS_FILE).write_text(json.dumps({"2": other.expert_accuracy()["2"]}))
    assert cli.main(["--home", str(tmp_path / "home"), "study", str(spec_file), "--reuse", study.id]) == 0
    assert other.expert_accuracy()["1"] == source.expert_accuracy()["1"]
    capsys.readouterr()
    summary = other.summary()
    assert set(summary["copied_runs"]) == {run_id(Cell(2, 2), 1, m) for m in ("mtt", "seqmatch")}
    assert "2 of them copied from another study" in format_table(summary)
    # only a run with the same config is a twin: another pixel lr, or a run not finished, is not
    cell = Cell(2, 2)
    twin_config = spec.run_config(cell, 1, "mtt")
    other_lr = dataclasses.replace(twin_config, distill=dataclasses.replace(twin_config.distill, lr_img=7.0))
    assert finished_twin([source], twin_config) is not None and finished_twin([source], other_lr) is None
    source.run(run_id(cell, 1, "mtt")).update_status(state="running")
    assert finished_twin([source], twin_config) is None
    # ids from the command line stay inside the home's studies; a study never reuses itself
    for reuse, message in (("../x", "study"), ("tiny-more", "cannot reuse its own runs")):
        assert cli.main(["--home", str(tmp_path / "home"), "study", str(spec_file), "--reuse", reuse]) == 2
        assert message in capsys.readouterr().err


def test_an_archived_study_goes_on_from_its_finished_runs_in_another_home(finished, tmp_path, capsys):
    import shutil

    home, study, summary, _ = finished
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps(study.spec().to_dict()))
    shutil.copytree(home, tmp_path / "a")
    unfinished = run_id(Cell(2, 2), 1, "seqmatch")
    StudyFolder.find(paths.studies_root(tmp_path / "a"), study.id).run(unfinished).update_status(state="running")
    archive = tmp_path / "archive"
    for _ in range(2):  # a second archive replaces the first
        assert cli.main(["--home", str(tmp_path / "a"), "study", str(spec_file), "--archive", str(archive)]) == 0
        assert "archived 3 finished runs" in capsys.readouterr().err
    kept = {p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file()}
    assert unfinished not in {p.split("/")[1] for p in kept if p.startswith("runs/")}
    assert not any("checkpoint" in p or "/snapshots/" in p for p in kept) and "study.json" in kept
    assert not [p for p in archive.parent.iterdir() if p.name.startswith(".")]  # no scratch left behind
    leak = archive / "runs" / run_id(Cell(2, 2), 0, "mtt") / "leak"
    leak.symlink_to("/etc/hostname")

    # another machine: the finished runs are restored, the unfinished one runs again, to the same numbers
    assert cli.main(["--home", str(tmp_path / "b"), "study", str(spec_file), "--restore", str(archive)]) == 0
    assert "restored 3 finished runs" in capsys.readouterr().err
    other = StudyFolder.find(paths.studies_root(tmp_path / "b"), study.id)
    for rid in {p.id for p in study.spec().plan()} - {unfinished}:
        assert other.run(rid).origin() == str((archive / "runs" / rid).resolve())
        assert (other.run(rid).path / "eval.json").read_bytes() == (study.run(rid).path / "eval.json").read_bytes()
    assert other.run(unfinished).origin() is None and not (other.run(run_id(Cell(2, 2), 0, "mtt")).path / "leak").exists()
    assert other.summary()["cells"] == summary["cells"] and other.expert_accuracy() == study.expert_accuracy()
    assert "3 of them copied from another study" in format_table(other.summary())

    # an archive is only restored into a study of its spec, only with the plan's runs and configs
    tampered = archive / "runs" / run_id(Cell(2, 2), 0, "seqmatch") / "config.json"
    raw = json.loads(tampered.read_text())
    raw["distill"]["lr_img"] = 7.0
    tampered.write_text(json.dumps(raw))
    fresh = StudyFolder.create_or_open(paths.studies_root(tmp_path / "c"), study.spec())
    restored, left_out = fresh.restore_from(StudyFolder(archive))
    assert sorted(restored) == [run_id(Cell(2, 2), 0, "mtt"), run_id(Cell(2, 2), 1, "mtt")]
    assert left_out == [f"{run_id(Cell(2, 2), 0, 'seqmatch')} (not finished, damaged, or not a run of this spec)"]
    elsewhere = StudyFolder.create_or_open(paths.studies_root(tmp_path / "c"), tiny_spec(name="tiny-other"))
    with pytest.raises(ConfigError, match="archive of another study spec"):
        elsewhere.restore_from(StudyFolder(archive))
    with pytest.raises(StorageError, match="holds no archived study"):
        fresh.restore_from(StudyFolder(tmp_path / "nothing"))
    # an archive never replaces a folder that is not one, nor the study's own
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    for target, message in ((notes, "is no study archive"), (other.path / "runs", "overlaps the study"),
                            (notes / "keep.txt", "is a file")):
        assert cli.main(["--home", str(tmp_path / "b"), "study", str(spec_file), "--archive", str(target)]) == 2
        assert message in capsys.readouterr().err
    assert (notes / "keep.txt").read_text() == "mine"
    assert cli.main(["--home", str(tmp_path / "d"), "study", str(spec_file), "--archive"]) == 2
    assert "has not run in this home" in capsys.readouterr().err


@pytest.mark.parametrize("archive", sorted((paths.LEARN_DIR / "studies").glob("*/archive")), ids=lambda p: p.parent.name)
def test_the_study_archives_in_the_repository_restore_whole_into_their_preset(archive, tmp_path):
    """What a new machine does to go on with a study (`study --preset NAME --restore`): the archive must still be
    of its preset's spec, and every archived run a run of that plan, or the study would start over."""
    spec = load_study_spec(archive.parent.name)
    study = StudyFolder.create_or_open(paths.studies_root(tmp_path), spec)
    restored, left_out = study.restore_from(StudyFolder(archive))
    assert left_out == [] and sorted(restored) == sorted(p.name for p in (archive / "runs").iterdir())
    assert summarise(study)["runs_done"] == len(restored) > 0


def test_one_seed_shows_no_spread_and_the_table_says_what_is_evidence():
    from seqmatch_engine.orchestration.study_summary import _pct, mean_std

    assert _pct(mean_std([0.8])) == "80.00 (n=1)"
    assert _pct(mean_std([0.8, 0.82]), signed=True) == "+81.00 ± 1.41 (n=2)"
    summary = {"study": "s", "budget": "per-image", "seeds": [0], "runs_done": 0, "runs_total": 2,
               "cells": [{"ipc": 2, "subsets": 2, "methods": {}, "random_real": None, "paired": None,
                          "sequential_gain": {}, "headroom": None}], "experts": {}, "experts_overall": None}
    assert "fewer than 3 paired seeds is a demonstration, not evidence" in format_table(summary)


def test_the_paired_interval_is_students_t_over_the_seeds():
    from seqmatch_engine.orchestration.study_summary import paired_interval

    # t(0.975) with 2 and 4 degrees of freedom, from a printed table: 4.303 and 2.776
    low, high = paired_interval([0.01, 0.02, 0.03])
    assert (low + high) / 2 == pytest.approx(0.02) and (high - low) / 2 == pytest.approx(4.303 * 0.01 / 3 ** 0.5, rel=1e-4)
    differences = [0.004, -0.002, 0.01, 0.006, 0.001]
    mean, std = sum(differences) / 5, (sum((d - sum(differences) / 5) ** 2 for d in differences) / 4) ** 0.5
    low, high = paired_interval(differences)
    assert (low, high) == pytest.approx((mean - 2.776 * std / 5 ** 0.5, mean + 2.776 * std / 5 ** 0.5), rel=1e-3)
    assert paired_interval([0.01]) is None  # one seed: no spread, no interval


def test_an_iterations_axis_expands_to_the_right_configs():
    spec = tiny_spec(grid=[{"ipc": 2, "subsets": 2, "iterations": 6}, {"ipc": 2, "subsets": 2, "iterations": 2,
                                                                      "seeds": [1]}])
    long, short = spec.grid
    seq = spec.run_config(long, 0, "seqmatch")
    assert [s.iterations for s in seq.distill.subsets] == [6, 6]
    assert spec.run_config(long, 0, "mtt").distill.subsets[0].iterations == 6      # per image: as each subset
    total = tiny_spec(budget="total", grid=[{"ipc": 2, "subsets": 2, "iterations": 6}])
    assert total.run_config(total.grid[0], 0, "mtt").distill.subsets[0].iterations == 12  # total: the sum
    assert [p.id for p in spec.plan()] == [
        "ipc002-k2-it6-mtt-seed0", "ipc002-k2-it6-seqmatch-seed0", "ipc002-k2-it6-mtt-seed1",
        "ipc002-k2-it6-seqmatch-seed1", "ipc002-k2-it2-mtt-seed1", "ipc002-k2-it2-seqmatch-seed1"]
    assert spec.run_count() == 6
    assert spec.run_config(short, 1, "seqmatch").name == "tiny-ipc2-k2-it2"
    # a cell without iterations keeps the base's and today's run ids
    assert tiny_spec().run_config(Cell(2, 2), 0, "seqmatch").distill.subsets[0].iterations == 4


def test_a_cell_may_set_its_own_settings_for_its_runs_only():
    """The convergence study's 1,000-iteration cell selects every 75 iterations, as its 300-iteration cell does."""
    base = tiny_spec().base_config().distill
    assert (base.select_points, base.select_every) == (0, 0)
    spec = tiny_spec(grid=[{"ipc": 2, "subsets": 2, "iterations": 6},
                           {"ipc": 2, "subsets": 2, "iterations": 12,
                            "overrides": ["distill.select_points=0", "distill.select_every=3"]}])
    short, long = spec.grid
    for method in ("mtt", "seqmatch"):
        config = spec.run_config(long, 0, method)
        assert (config.distill.select_points, config.distill.select_every) == (0, 3)
        kept = spec.run_config(short, 0, method).distill
        assert (kept.select_points, kept.select_every) == (0, 0)
    assert spec.run_config(long, 0, "seqmatch").distill.subsets[0].iterations == 12
    assert [p.id for p in spec.plan()][-1] == "ipc002-k2-it12-seqmatch-seed1"  # run ids do not name settings
    with pytest.raises(ConfigError, match=r"study.grid\[1\]: the same cell as an earlier one"):
        tiny_spec(grid=[{"ipc": 2, "subsets": 2}, {"ipc": 2, "subsets": 2, "overrides": ["distill.syn_steps=3"]}])


@pytest.mark.parametrize("cell, message", [
    ({"ipc": 2.7, "subsets": 2}, r"study.grid\[0\].ipc: expected a whole number, got 2.7"),
    ({"ipc": "2", "subsets": 2}, r'study.grid\[0\].ipc: expected a whole number, got "2"'),
    ({"ipc": True, "subsets": 2}, r"study.grid\[0\].ipc: expected a whole number, got true"),
    ({"ipc": 2, "subsets": 2.0}, r"study.grid\[0\].subsets: expected a whole number, got 2.0"),
    ({"ipc": 2, "subsets": 2, "iterations": "3"}, r'study.grid\[0\].iterations: expected a whole number, got "3"'),
    ({"ipc": 2, "subsets": 2, "seeds": [0, 1.5]}, r"study.grid\[0\].seeds\[1\]: expected a whole number, got 1.5"),
    ({"ipc": 2, "subsets": 2, "iteration": 3, "lr": 1},
     r"study.grid\[0\].iteration, study.grid\[0\].lr: unknown settings; known settings here: ipc, iterations, "
     r"overrides, seeds"),
    ({"ipc": 0, "subsets": 2}, r"study.grid\[0\].ipc: must be >= 1, got 0"),
    ({"ipc": 2, "subsets": 0}, r"study.grid\[0\].subsets: must be >= 1, got 0"),
    ({"ipc": 2, "subsets": 2, "iterations": 0}, r"study.grid\[0\].iterations: must be >= 1"),
    ({"ipc": 2, "subsets": 2, "iteration": 3}, r"study.grid\[0\].iteration: unknown setting; known settings here: "
                                               r"ipc, iterations, overrides, seeds, subsets"),
    ({"ipc": 2, "subsets": 2, "overrides": ["distill.select_every"]},
     r"study.grid\[0\] \(mtt, seed 0\): override 'distill.select_every': expected key=value"),
    ({"ipc": 2, "subsets": 2, "overrides": ["distill.select_every=-1"]},
     r"study.grid\[0\] \(mtt, seed 0\): distill.select_every: must be >= 0"),
    ({"ipc": 2, "subsets": 2, "seeds": [1, 1]}, r"study.grid\[0\].seeds: needs distinct whole numbers"),
    ({"ipc": 2}, r"study.grid\[0\]: missing required setting subsets"),
])
def test_a_grid_cell_is_parsed_strictly_naming_the_field(cell, message):
    with pytest.raises(ConfigError, match=message):
        tiny_spec(grid=[cell])


@pytest.mark.parametrize("change, message", [
    ({"seeds": [True, False]}, r"study.seeds\[0\]: expected a whole number, got true"),
    ({"tune_seeds": ["0"], "lr_img": [10]}, r'study.tune_seeds\[0\]: expected a whole number, got "0"'),
    ({"lr_img": [10, 10]}, "study.lr_img: distinct values > 0"),
    ({"lr_img": [-1]}, "study.lr_img: distinct values > 0"),
    ({"tune_seeds": [0]}, "study.tune_seeds: only with an lr sweep"),
    ({"lr_img": [10], "tune_seeds": [7]}, r"study.grid\[0\]: none of its seeds is a tune seed"),
    ({"lr_img": [10, 20]}, "choosing an lr needs validation scores"),  # the tiny base does not select
])
def test_bad_sweeps_and_seeds_name_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        tiny_spec(**change)


def sweep_spec(**changes) -> StudySpec:
    base = tiny_run_config("base", 0, (1, 1), diagnose_every=2, select_points=2).to_dict()
    base["eval"]["num_nets"] = 2
    return StudySpec.from_dict({"name": "sweep", "config": base, "grid": [{"ipc": 2, "subsets": 2}], "seeds": [0, 1],
                                "lr_img": [10.0, 40.0], "tune_seeds": [0], **changes})


def test_an_lr_sweep_tunes_on_validation_and_runs_the_other_seeds_at_the_choice(tmp_path):
    spec = sweep_spec()
    study = StudyFolder.create_or_open(paths.studies_root(tmp_path), spec)
    started = []
    summary = run_study(study, paths.experts_root(tmp_path), on_run=lambda rid, i, n: started.append((rid, n)))
    tuning = [run_id(Cell(2, 2), 0, m, lr) for lr in (10.0, 40.0) for m in ("mtt", "seqmatch")]
    assert [rid for rid, _ in started[:4]] == tuning and {n for _, n in started} == {6}
    row = summary["cells"][0]
    for method in ("mtt", "seqmatch"):
        scores = {lr: study.run(run_id(Cell(2, 2), 0, method, lr)).validation_accuracy() for lr in (10.0, 40.0)}
        chosen = max(scores, key=lambda lr: (scores[lr], lr == 10.0))  # ties: the earlier value
        assert row["methods"][method]["lr_img"] == chosen
        assert started[4 + ("mtt", "seqmatch").index(method)][0] == run_id(Cell(2, 2), 1, method, chosen)
        other = 40.0 if chosen == 10.0 else 10.0
        assert study.run(run_id(Cell(2, 2), 1, method, other)) is None  # never run: only the choice is
        values = [study.run(run_id(Cell(2, 2), s, method, chosen)).eval().accuracy()["mean"] for s in (0, 1)]
        assert row["methods"][method]["accuracy"]["values"] == values
        sweep = {entry["lr_img"]: entry for entry in row["methods"][method]["lr_sweep"]}
        assert sweep[other]["val"]["values"] == [scores[other]]
        assert study.run(run_id(Cell(2, 2), 0, "seqmatch", other)).controls() is None or method == "mtt"
    for seed in (0, 1):  # controls only for the runs the summary reports
        assert study.run(run_id(Cell(2, 2), seed, "seqmatch", row["methods"]["seqmatch"]["lr_img"])).controls()
    assert summary["runs_done"] == summary["runs_total"] == 6
    table = format_table(summary)
    assert "Pixel-lr sweep on the tune seeds ([0])" in table and "| 2 | 2 | 4 | static MTT | 10 |" in table
    assert "| headroom | static MTT: pixel lr, coupling | SeqMatch: pixel lr, coupling |" in table
    settings = next(line for line in table.splitlines() if line.startswith("| 2 | 2 | 4 | ") and line.count("|") == 7)
    for method in ("mtt", "seqmatch"):  # each method's chosen lr beside its coupling index, in the catalogue's order
        result = row["methods"][method]
        assert f"| {result['lr_img']:g}, {result['coupling']['mean']:.3f} |" in settings
    assert "(lowest tried) |" in table or "(highest tried) |" in table  # two values: every choice is an edge
    assert "is not bracketed" in table
    for method in ("mtt", "seqmatch"):  # where each reported run kept its sets, read back from its metrics lines
        runs = [study.run(run_id(Cell(2, 2), s, method, row["methods"][method]["lr_img"])) for s in (0, 1)]
        expected = []
        for run in runs:
            lines = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
            expected.append([max((r["iteration"] for r in lines if r["kind"] == "selection" and r["best"]
                                  and r["stage"] == k), default=None) for k in range(len(run.config().distill.subsets))])
        assert row["methods"][method]["kept"] == {"seeds": [0, 1], "iterations": expected, "points": [2, 4]}
        per_seed = ", ".join(f"{s}: " + "/".join(str(i) for i in stages) for s, stages in zip((0, 1), expected))
        assert f"| 2 | 2 | 4 | {METHOD_LABELS[method]} | 2, 4 | {per_seed} |" in table


def test_long_runs_of_selection_points_read_as_a_step():
    from seqmatch_engine.orchestration.study_summary import _points_text

    assert _points_text(selection_iterations(1000, 75, 0)) == "every 75 to 1000"
    assert _points_text(selection_iterations(100, 0, 4)) == "25, 50, 75, 100"
    assert _points_text(None) == "–"


@pytest.mark.parametrize("chosen, marks", [
    (30.0, ["", "✓", ""]),
    (10.0, ["✓ (lowest tried)", "", ""]),
    (100.0, ["", "", "✓ (highest tried)"]),
    (None, ["", "", ""]),
])
def test_the_sweep_table_says_when_the_choice_is_at_the_grids_edge(chosen, marks):
    from seqmatch_engine.orchestration.study_summary import choice_mark

    swept = [100.0, 30.0, 10.0]  # in the study's order, not sorted
    assert [choice_mark(lr, chosen, swept) for lr in (10.0, 30.0, 100.0)] == marks
    assert choice_mark(5.0, 5.0, [5.0]) == "✓"  # one value: nothing was swept


def test_a_sweep_whose_tuning_is_unfinished_chooses_nothing_yet(tmp_path):
    spec = sweep_spec(controls=False)
    study = StudyFolder.create_or_open(paths.studies_root(tmp_path), spec)
    assert [p.id for p in spec.plan(chooser(study, spec))] == [run_id(Cell(2, 2), 0, m, lr) for lr in (10.0, 40.0)
                                                                for m in ("mtt", "seqmatch")]
    summary = summarise(study)
    assert summary["runs_done"] == 0 and summary["runs_total"] == 6
    assert summary["cells"][0]["methods"]["mtt"]["lr_img"] is None
    assert "| –, – | –, – |" in format_table(summary)  # no lr chosen and no coupling yet, for either method


def test_a_soft_label_method_is_listed_with_soft_labels_before_any_of_its_runs_ends(tmp_path):
    """The fair-scores table's labels column says what the method learns, not what its finished runs showed."""
    spec = sweep_spec(controls=False, methods=["mtt", "datm", "seqmatch-datm"])
    study = StudyFolder.create_or_open(paths.studies_root(tmp_path), spec)
    methods = summarise(study)["cells"][0]["methods"]
    assert {m: methods[m]["labels"] for m in methods} == {"mtt": "hard", "datm": "soft", "seqmatch-datm": "soft"}
    assert "| SeqMatch-DATM | soft | – |" in format_table(summarise(study))


def test_a_run_written_with_select_every_is_the_same_run_as_its_select_points_twin():
    from seqmatch_engine.core.study_spec import same_run

    every = tiny_run_config("x", 0, (1, 1), select_every=2)            # 4 iterations: points 2, 4
    points = tiny_run_config("x", 0, (1, 1), select_points=2)
    assert same_run(every, points) and same_run(points, points)
    assert not same_run(every, tiny_run_config("x", 0, (1, 1), select_points=4))
    assert not same_run(every, tiny_run_config("x", 1, (1, 1), select_points=2))


def test_a_study_of_four_methods_pairs_them_by_seed_and_leads_with_fair_scores(tmp_path):
    base = tiny_run_config("base", 0, (1, 1), diagnose_every=2).to_dict()
    base["eval"]["num_nets"] = 2
    spec = StudySpec.from_dict({"name": "four", "config": base, "grid": [{"ipc": 2, "subsets": 2}], "seeds": [0, 1],
                                "methods": ["mtt", "seqmatch", "datm", "seqmatch-datm"], "controls": True})
    configs = {m: spec.run_config(Cell(2, 2), 1, m) for m in spec.methods}
    assert {m: (c.distill.objective, c.schedule, c.method) for m, c in configs.items()} == {
        "mtt": ("mtt", "static", "mtt"), "seqmatch": ("mtt", "sequential", "seqmatch"),
        "datm": ("datm", "static", "datm"), "seqmatch-datm": ("datm", "sequential", "seqmatch-datm")}
    study = StudyFolder.create_or_open(paths.studies_root(tmp_path), spec)
    summary = run_study(study, paths.experts_root(tmp_path))
    assert summary["runs_done"] == summary["runs_total"] == 8
    row = summary["cells"][0]
    for seed in (0, 1):  # every method of a seed: the same random-real baseline (same images, nets; hard labels)
        results = [study.run(run_id(Cell(2, 2), seed, m)).eval() for m in spec.methods]
        assert len({json.dumps(r.accuracy("random_real"), sort_keys=True) for r in results}) == 1
        soft = [r for r in results if r.accuracy("random_real_soft")]
        assert [r.method for r in soft] == ["datm", "seqmatch-datm"]
        assert soft[0].accuracy("random_real_soft") == soft[1].accuracy("random_real_soft")
    datm = row["methods"]["datm"]
    assert datm["labels"] == "soft" and datm["gain"]["over"] == "random_real_soft"
    assert row["methods"]["mtt"]["gain"]["over"] == "random_real" and row["methods"]["mtt"]["labels"] == "hard"
    own = [study.run(run_id(Cell(2, 2), s, "datm")).eval() for s in (0, 1)]
    assert datm["gain"]["values"] == pytest.approx([r.accuracy()["mean"] - r.accuracy("random_real_soft")["mean"]
                                                    for r in own])
    assert datm["hard_labels"]["values"] == [r.accuracy("synthetic_hard")["mean"] for r in own]
    assert set(row["sequential_gain"]) == {"mtt", "datm"} and row["paired"] == row["sequential_gain"]["mtt"]
    assert set(row["methods"]["seqmatch-datm"]["controls"]) == {"first_subset_alone", "one_stage", "random_last"}
    table = format_table(summary)
    assert "| static MTT | SeqMatch | DATM | SeqMatch-DATM | random real | random real, soft labels |" in table
    assert "| SeqMatch-DATM − DATM |" in table and "Fair scores" in table and "gain over random real" in table
    assert "(paired) |" not in table  # two pairs: listed in the paired table only, so the accuracy table stays narrow
    assert table.index("Fair scores") < table.index("| SeqMatch-DATM − DATM |")  # the view leads with them
