"""How long a study has left: its remaining runs priced by what the runs it finished itself measured.

    eta = study_eta(study)          # StudyEta(seconds, basis) or None while nothing is measured yet

A run's distilling and evaluating phases are priced in work units (eta.run_plan) at the median seconds per unit
of the study's finished runs; an experts phase at the median seconds of that stage's experts phases that trained
(a stage-1 phase of under LOADED_EXPERTS_S seconds loaded its experts from the cache). Stage-1 experts are priced
once per seed that no run of the study has reached yet (an upper bound: another study may have cached them).
Runs copied from another study or an archive count as done but are not measured (another machine, another load).
The evaluation-only controls a study measures after a sequential run are priced as evaluation units
(eta.controls_plan), whole until they are saved (controls in progress are not counted down).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from seqmatch_engine.core.phases import PhaseKind
from seqmatch_engine.core.study_spec import PlannedRun, StudySpec
from seqmatch_engine.orchestration.eta import PhasePlan, controls_plan, run_plan
from seqmatch_engine.orchestration.study_summary import chooser
from seqmatch_engine.storage.records import RunState, RunStatus
from seqmatch_engine.storage.study_folder import StudyFolder

LOADED_EXPERTS_S = 5.0   # an experts phase shorter than this loaded its experts rather than training them
PRICED_BY_UNITS = (PhaseKind.DISTILLING, PhaseKind.EVALUATING)


@dataclass(frozen=True)
class StudyEta:
    seconds: float   # the rest of the run in progress and every run after it
    basis: int       # finished runs of this study whose times priced it


@dataclass(frozen=True)
class Rates:
    """What a study's finished runs measured: seconds per unit by phase kind, seconds per experts phase by stage."""

    per_unit: dict[PhaseKind, float]
    experts: dict[int, float]      # stage (0-based) -> seconds of an experts phase that trained
    basis: int

    def phase_seconds(self, phase: PhasePlan, trains_stage1_experts: bool) -> float | None:
        """Seconds `phase` should take; None when nothing measured prices it."""
        if phase.kind in PRICED_BY_UNITS:
            rate = self.per_unit.get(phase.kind)
            return None if rate is None else phase.units * rate
        if phase.stage == 0 and not trains_stage1_experts:
            return 0.0
        return self.experts.get(phase.stage)


def _phases(status: RunStatus, plan: list[PhasePlan]) -> list[tuple[PhasePlan, float]]:
    """The planned phases of a finished run with the seconds its status recorded for each."""
    return [(phase, status.phase_seconds[phase.name]) for phase in plan if phase.name in status.phase_seconds]


def measured_rates(study: StudyFolder) -> Rates:
    """The median per-run rate of each phase kind over the study's finished, not copied, runs."""
    per_unit: dict[PhaseKind, list[float]] = {kind: [] for kind in PRICED_BY_UNITS}
    experts: dict[int, list[float]] = {}
    basis = 0
    for run in study.runs():
        if not run.finished() or run.origin() is not None:
            continue
        status = run.status()
        basis += 1
        phases = _phases(status, run_plan(run.config(), 0, len(status.class_names)))  # experts: by time, not units
        for kind in PRICED_BY_UNITS:
            units = sum(p.units for p, _ in phases if p.kind == kind)
            if units > 0:
                per_unit[kind].append(sum(s for p, s in phases if p.kind == kind) / units)
        for phase, seconds in phases:
            if phase.kind == PhaseKind.EXPERTS and (phase.stage > 0 or seconds >= LOADED_EXPERTS_S):
                experts.setdefault(phase.stage, []).append(seconds)
    return Rates({k: statistics.median(v) for k, v in per_unit.items() if v},
                 {k: statistics.median(v) for k, v in experts.items()}, basis)


def _fraction_done(status: RunStatus) -> float:
    """How much of its current phase a run in progress has done (distilling: its iterations; else unknown, 0)."""
    if status.phase_kind == PhaseKind.DISTILLING and status.iterations:
        return min(status.iteration / status.iterations, 1.0)
    return 0.0


def study_eta(study: StudyFolder) -> StudyEta | None:
    """Seconds until the study is done at the pace its own finished runs measured; None before any finished run
    prices every kind of phase left (a first SeqMatch run prices stage-2 experts, for instance). The runs after the
    current one are priced once per (runs done, current run, controls in progress) and kept (a view polls this
    every second); the current run's rest is read from its status each call."""
    status = study.status()
    key = (str(study.path), status.done, status.current, status.controls)
    priced = _LATER_RUNS.get(key, _UNPRICED)  # one lookup: the app's poll threads may share this cache
    if priced is _UNPRICED:
        priced = _price_later_runs(study, status.current)
        _LATER_RUNS.clear()  # one study is watched at a time
        _LATER_RUNS[key] = priced
    if priced is None:
        return None
    current = priced.current
    run = study.run(current.id) if current else None
    run_status = run.status() if run else None
    if current is None or (run_status is not None and run_status.state == RunState.DONE):
        return StudyEta(priced.seconds, priced.rates.basis)
    left = _run_seconds_left(current, priced.spec, priced.rates, priced.classes, run_status,
                             priced.current_trains_experts)
    return None if left is None else StudyEta(priced.seconds + left, priced.rates.basis)


@dataclass(frozen=True)
class _LaterRuns:
    spec: StudySpec
    rates: Rates
    classes: int
    seconds: float                 # every unfinished run but the current one
    current: PlannedRun | None     # the current run's plan entry
    current_trains_experts: bool   # no other run has its seed's stage-1 experts


_LATER_RUNS: dict[tuple, _LaterRuns | None] = {}
_UNPRICED = object()


def _price_later_runs(study: StudyFolder, current_id: str | None) -> _LaterRuns | None:
    """The unfinished runs but the current one, and the controls not measured yet (the current run's included),
    priced; None while the finished runs price nothing or not every phase left."""
    spec = study.spec()
    rates = measured_rates(study)
    if rates.basis == 0:
        return None
    classes = next((len(r.status().class_names) for r in study.runs() if r.status().class_names), 0)
    choose = chooser(study, spec)
    seeds_reached = _seeds_past_stage1_experts(study, but=current_id)
    later, current, current_trains = 0.0, None, False
    undecided = (spec.lr_img or [None])[0]  # a run whose lr is not chosen yet costs what it will at any lr
    for planned in spec.plan(lambda cell, method: choose(cell, method) or undecided):
        run = study.run(planned.id)
        done = run is not None and run.status().state == RunState.DONE
        if spec.measures_controls(planned, choose(planned.cell, planned.method) or undecided) and not (
                done and run.controls() is not None):
            if PhaseKind.EVALUATING not in rates.per_unit:
                return None
            config = spec.run_config(planned.cell, planned.seed, planned.method, planned.lr_img)
            later += controls_plan(config, classes).units * rates.per_unit[PhaseKind.EVALUATING]
        if done:
            continue
        if planned.id == current_id:
            current, current_trains = planned, planned.seed not in seeds_reached
            seeds_reached.add(planned.seed)
            continue
        left = _run_seconds_left(planned, spec, rates, classes, run.status() if run else None,
                                 planned.seed not in seeds_reached)
        if left is None:
            return None
        seeds_reached.add(planned.seed)
        later += left
    return _LaterRuns(spec, rates, classes, later, current, current_trains)


def _seeds_past_stage1_experts(study: StudyFolder, but: str | None) -> set[int]:
    """The seeds whose stage-1 experts some run of the study other than `but` has trained or loaded (it has gone
    past that phase, the first of its plan)."""
    return {run.config().seed for run in study.runs()
            if run.path.name != but and _resume_point(run_plan(run.config(), 0, 0), run.status())[0] > 0}


def _resume_point(plan: list[PhasePlan], status: RunStatus | None) -> tuple[int, float]:
    """(the index in `plan` of the phase a run is in or resumes in, the fraction of it done). A running run: its
    phase (distilling: by its iterations). A stopped or killed one: the last phase it recorded time for (earlier
    ones are done), distilling from the iteration of its last checkpoint. Not started: (0, 0); done: past the end."""
    if status is None:
        return 0, 0.0
    if status.state == RunState.DONE:
        return len(plan), 0.0
    names = [p.name for p in plan]
    if status.phase in names:
        return names.index(status.phase), _fraction_done(status)
    recorded = [i for i, p in enumerate(plan) if p.name in status.phase_seconds]
    if not recorded:
        return 0, 0.0
    last = plan[recorded[-1]]
    checkpointed = last.kind == PhaseKind.DISTILLING and status.stage == last.stage and status.iterations
    return recorded[-1], (min(status.iteration / status.iterations, 1.0) if checkpointed else 0.0)


def _run_seconds_left(planned: PlannedRun, spec: StudySpec, rates: Rates, classes: int, status: RunStatus | None,
                      trains_stage1_experts: bool) -> float | None:
    """The seconds a planned run has left: all of it when not started, else the rest of the phase it is in or resumes
    in and the phases after it."""
    # 0 training images: experts are priced by their measured phase times, not by units
    plan = run_plan(spec.run_config(planned.cell, planned.seed, planned.method, planned.lr_img), 0, classes)
    start, fraction = _resume_point(plan, status)
    left = 0.0
    for index, phase in enumerate(plan[start:], start):
        seconds = rates.phase_seconds(phase, trains_stage1_experts)
        if seconds is None:
            return None
        left += seconds * (1 - fraction if index == start else 1)
    return left
