"""A study's time left: its unfinished runs priced by the phase times of the runs it finished itself.

A tiny study runs once; its copies get chosen phase times (distilling 1 ms per unit, evaluating 0.5 ms, stage-1
experts 100 s where they trained and 0.01 s where they were loaded, stage-2 experts 40 s), so what a removed run
would take again is known exactly: the time it recorded.
"""
from __future__ import annotations

import shutil

import pytest
from configs import tiny_run_config

from seqmatch_engine.core import paths
from seqmatch_engine.core.phases import PhaseKind
from seqmatch_engine.core.study_spec import Cell, StudySpec, run_id
from seqmatch_engine.orchestration.eta import run_plan
from seqmatch_engine.orchestration.study import run_study
from seqmatch_engine.orchestration.study_eta import study_eta
from seqmatch_engine.storage.files import read_json, write_json
from seqmatch_engine.storage.records import RunState
from seqmatch_engine.storage.study_folder import StudyFolder

PER_UNIT = {PhaseKind.DISTILLING: 1e-3, PhaseKind.EVALUATING: 5e-4}
CELL = Cell(2, 2)


def spec() -> StudySpec:
    base = tiny_run_config("base", 0, (1, 1)).to_dict()
    base["eval"]["num_nets"] = 2
    return StudySpec.from_dict({"name": "eta", "config": base, "grid": [{"ipc": 2, "subsets": 2}], "seeds": [0, 1],
                                "methods": ["mtt", "seqmatch"], "controls": False})


@pytest.fixture(scope="module")
def finished_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("eta-home")
    run_study(StudyFolder.create_or_open(paths.studies_root(home), spec()), paths.experts_root(home))
    return home


def chosen_times(study: StudyFolder) -> dict[str, float]:
    """Give every run the phase times above; returns each run's total but its loading (data, cached experts), which
    the estimate does not price."""
    totals = {}
    for run in study.runs():
        status = run.status()
        trained_experts = run.config().distill.subsets[0].ipc == 2  # static MTT runs first in each seed
        seconds = {"loading data": 0.5}
        for phase in run_plan(run.config(), 0, len(status.class_names)):
            if phase.kind in PER_UNIT:
                seconds[phase.name] = phase.units * PER_UNIT[phase.kind]
            else:
                seconds[phase.name] = (100.0 if trained_experts else 0.01) if phase.name == "experts 1" else 40.0
        run.update_status(phase_seconds=seconds)
        totals[run.path.name] = sum(seconds.values()) - seconds["loading data"] - (0.0 if trained_experts else 0.01)
    return totals


@pytest.fixture
def study(finished_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(finished_home, home)
    return StudyFolder.find(paths.studies_root(home), "eta")


def test_the_runs_left_cost_what_the_same_runs_took(study):
    totals = chosen_times(study)
    seed1 = [run_id(CELL, 1, m) for m in ("mtt", "seqmatch")]
    for rid in seed1:
        shutil.rmtree(study.run(rid).path)
    study.update_status(state=RunState.RUNNING, done=2, current=None)
    eta = study_eta(study)
    assert eta is not None and eta.basis == 2
    assert eta.seconds == pytest.approx(sum(totals[rid] for rid in seed1))  # seed 1's stage-1 experts trained again


@pytest.mark.parametrize("state", ["running", "stopped"])
def test_the_run_in_progress_counts_only_what_it_has_left(study, state):
    """Seed 1's static MTT run at 1 of its 4 S1 iterations: running there, or SIGTERMed at that checkpoint (then
    it resumes there); either way its experts are done, and seed 1's SeqMatch run will load them."""
    totals = chosen_times(study)
    mtt1, seq1 = run_id(CELL, 1, "mtt"), run_id(CELL, 1, "seqmatch")
    shutil.rmtree(study.run(seq1).path)
    current = study.run(mtt1)
    recorded = current.status().phase_seconds
    where = ({"phase": "distilling S1", "phase_kind": PhaseKind.DISTILLING} if state == "running" else
             {"phase": "stopped", "phase_kind": None,
              "phase_seconds": {name: recorded[name] for name in ("experts 1", "distilling S1")}})
    current.update_status(state=RunState(state), stage=0, iteration=1, iterations=4, **where)
    study.update_status(state=RunState.RUNNING, done=2, current=mtt1)
    eta = study_eta(study)
    left = 0.75 * recorded["distilling S1"] + recorded["evaluating"]
    assert eta.seconds == pytest.approx(left + totals[seq1])
    assert eta.basis == 2  # the run in progress is not a measurement


def test_copied_runs_count_as_done_but_price_nothing(study):
    chosen_times(study)
    for rid in (run_id(CELL, 0, "mtt"), run_id(CELL, 0, "seqmatch")):
        (study.run(rid).path / paths.ORIGIN_FILE).write_text('{"copied_from": "/elsewhere"}')
    shutil.rmtree(study.run(run_id(CELL, 1, "seqmatch")).path)
    study.update_status(state=RunState.RUNNING, done=3, current=None)
    # only seed 1's static MTT run is measured: it prices distilling and evaluating, but no run measured stage-2
    # experts, so the SeqMatch run left cannot be priced yet
    assert study_eta(study) is None
    shutil.rmtree(study.run(run_id(CELL, 1, "mtt")).path)
    study.update_status(done=2)
    assert study_eta(study) is None  # nothing measured here at all


def test_a_finished_study_has_nothing_left(study):
    chosen_times(study)
    study.update_status(done=4, current=None)
    assert study_eta(study).seconds == 0.0


def test_the_cli_says_how_long_the_study_has_left_as_each_run_starts(study, tmp_path, capsys):
    import json

    from seqmatch_engine.interfaces import cli

    chosen_times(study)
    for method in ("mtt", "seqmatch"):
        shutil.rmtree(study.run(run_id(CELL, 1, method)).path)
    spec_file = tmp_path / "eta.json"
    spec_file.write_text(json.dumps(study.spec().to_dict()))
    home = study.path.parent.parent
    assert cli.main(["--home", str(home), "study", str(spec_file)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("== run")]
    assert lines[2].startswith(f"== run 3/4: {run_id(CELL, 1, 'mtt')} (the study: about 2 min ")  # 140.67 s
    assert lines[3].startswith(f"== run 4/4: {run_id(CELL, 1, 'seqmatch')} (the study: about ")


def test_the_controls_not_measured_yet_cost_their_evaluation_units(study):
    """A study with controls measures them after each SeqMatch run: 3 curricula of evaluation nets, priced at the
    evaluating rate until measured (the ~3 min after each SeqMatch run at the convergence study's size)."""
    chosen_times(study)
    raw = read_json(study.path / paths.STUDY_FILE)
    write_json(study.path / paths.STUDY_FILE, {**raw, "controls": True})
    study.update_status(state=RunState.RUNNING, done=4, current=None)
    # 2 nets x 2 epochs x 10 classes x (S1 alone: 1 + one stage: 2 + S1 then random real: 1 + 2) images per class
    per_run = 2 * 2 * 10 * (1 + 2 + (1 + 2)) * PER_UNIT[PhaseKind.EVALUATING]
    assert study_eta(study).seconds == pytest.approx(2 * per_run)  # both seeds' SeqMatch runs
    study.run(run_id(CELL, 0, "seqmatch")).save_controls({"accuracy": {}, "eval_nets": 2})
    study.update_status(controls=run_id(CELL, 1, "seqmatch"))  # measuring seed 1's now
    assert study_eta(study).seconds == pytest.approx(per_run)
