"""A study's summary: a pure function of its run folders (mean ± std over seeds, paired differences, the lr sweep,
controls, fair scores for soft labels), and its markdown table."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from seqmatch_engine.core.config import (
    METHODS,
    OBJECTIVE_CATALOGUE,
    RunConfig,
    method_label,
    method_parts,
    selection_iterations,
    sequential_counterparts,
)
from seqmatch_engine.core.study_spec import EVIDENCE_SEEDS, Cell, LrChooser, StudySpec, run_id
from seqmatch_engine.orchestration.run_diagnostics.g1 import run_coupling_index
from seqmatch_engine.storage.study_folder import StudyFolder


def mean_std(values: list[float]) -> dict[str, Any]:
    """{"mean", "std", "n", "values"}; std is the sample standard deviation (n - 1), 0 for one value."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def lr_choice(study: StudyFolder, spec: StudySpec, cell: Cell, method: str) -> dict[str, Any] | None:
    """The lr sweep of `method` at `cell` on the tune seeds: {"chosen": lr or None while a tuning run is unfinished,
    "sweep": [{"lr_img", "val", "test"} per value, mean_std over the tune seeds that finished]}; None without a sweep.
    The chosen value has the best mean validation accuracy (ties: the earlier value of study.lr_img). `spec` is the
    study's, read once by the caller (parsing it builds every planned run's config)."""
    if not spec.lr_img:
        return None
    sweep, complete = [], True
    for lr in spec.lr_img:
        val, test = [], []
        for seed in spec.tune_seeds_of(cell):
            run = study.run(run_id(cell, seed, method, lr))
            result = run.eval() if run else None
            score = run.validation_accuracy() if result else None
            if score is None or result.accuracy() is None:
                complete = False
                continue
            val.append(score)
            test.append(result.accuracy()["mean"])
        sweep.append({"lr_img": lr, "val": mean_std(val) if val else None, "test": mean_std(test) if test else None})
    chosen = max(sweep, key=lambda row: row["val"]["mean"])["lr_img"] if complete else None
    return {"chosen": chosen, "sweep": sweep}


def selection_points(config: RunConfig) -> list[int]:
    """The iterations at which a run's first subset was scored on validation (besides its initial images)."""
    d = config.distill
    return selection_iterations(d.subsets[0].iterations, d.select_every, d.select_points)


def chooser(study: StudyFolder, spec: StudySpec) -> LrChooser:
    """The lr each method uses at a cell, as the finished tuning runs choose it (None while undecided)."""
    def choose(cell: Cell, method: str) -> float | None:
        choice = lr_choice(study, spec, cell, method)
        return choice["chosen"] if choice else None
    return choose


FLOAT_TIE = 1e-9  # a difference this small is the float rounding of two equal accuracies, not a seed's verdict


def paired_interval(differences: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval for the mean of paired differences (n - 1 degrees of freedom): the range a
    reader should compare with 0. None for fewer than two pairs (no spread to estimate)."""
    if len(differences) < 2:
        return None
    from scipy.stats import t  # deferred: scipy.stats is slow to import, only summaries with pairs need it

    half = t.ppf(0.5 + level / 2, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    centre = statistics.fmean(differences)
    return centre - half, centre + half


def _paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """a - b over the seeds both have: mean_std with the seeds, its 95 % interval ("ci95", None for one seed) and
    the number of seeds where a is above b ("above"); None without a common seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    differences = [a[s] - b[s] for s in seeds]
    interval = paired_interval(differences)
    return {**mean_std(differences), "seeds": seeds, "ci95": list(interval) if interval else None,  # as JSON has it
            "above": sum(d > FLOAT_TIE for d in differences)}


def choice_mark(lr: float, chosen: float | None, swept: list[float]) -> str:
    """The sweep table's "chosen" cell: ✓ for the choice, saying when it is the lowest or highest value tried."""
    if lr != chosen:
        return ""
    if len(swept) > 1 and lr == min(swept):
        return "✓ (lowest tried)"
    if len(swept) > 1 and lr == max(swept):
        return "✓ (highest tried)"
    return "✓"


def _stat(values: dict[int, float]) -> dict[str, Any] | None:
    return mean_std(list(values.values())) if values else None


def summarise(study: StudyFolder) -> dict[str, Any]:
    """Per cell and method (at its chosen lr when the study sweeps lr_img): the mean over seeds of each run's mean
    test accuracy (ConvNet) and its std over seeds; the gain over random real images trained the same way (soft
    labels from the same experts for a soft-label method), paired by seed, and a soft-label set's accuracy with
    hard labels; the paired differences sequential - static per objective (row "paired": SeqMatch - MTT); the
    coupling index and the controls; plus each seed's expert accuracy (the headroom)."""

    spec = study.spec()
    base_iterations = RunConfig.from_dict(spec.base()).distill.subsets[0].iterations
    cells = []
    for cell in sorted(spec.grid, key=lambda c: (c.ipc, c.subsets, c.iterations or base_iterations)):
        row: dict[str, Any] = {"ipc": cell.ipc, "subsets": cell.subsets,
                               "iterations": cell.iterations or base_iterations, "methods": {}}
        accuracy: dict[str, dict[int, float]] = {m: {} for m in spec.methods}
        hard_labels: dict[str, dict[int, float]] = {m: {} for m in spec.methods}
        baselines: dict[str, dict[int, float]] = {"random_real": {}, "random_real_soft": {}}
        coupling: dict[str, list[float]] = {m: [] for m in spec.methods}
        controls: dict[str, dict[str, list[float]]] = {m: {} for m in spec.methods}
        kept: dict[str, dict[int, list[int | None]]] = {m: {} for m in spec.methods}
        points: dict[str, list[int]] = {}
        choices = {method: lr_choice(study, spec, cell, method) for method in spec.methods}
        for seed in spec.cell_seeds(cell):
            for method in spec.methods:
                choice = choices[method]
                if choice is not None and choice["chosen"] is None:
                    continue  # the sweep is not finished: no lr is chosen yet
                run = study.run(run_id(cell, seed, method, choice and choice["chosen"]))
                result = run.eval() if run else None
                if not result or result.accuracy() is None:
                    continue
                accuracy[method][seed] = result.accuracy()["mean"]
                if result.accuracy("synthetic_hard"):
                    hard_labels[method][seed] = result.accuracy("synthetic_hard")["mean"]
                for kind, values in baselines.items():
                    if result.accuracy(kind):
                        values[seed] = result.accuracy(kind)["mean"]
                index = run_coupling_index(run.path)
                if index is not None:
                    coupling[method].append(index)
                for name, acc in (run.controls() or {}).get("accuracy", {}).items():
                    controls[method].setdefault(name, []).append(acc["mean"])
                stages = run.kept_iterations()
                if any(iteration is not None for iteration in stages):
                    kept[method][seed] = stages
                    points[method] = selection_points(run.config())
        for method in spec.methods:
            if not accuracy[method] and not choices[method]:
                continue
            soft = OBJECTIVE_CATALOGUE[method_parts(method)[0]].soft_labels  # what it learns, before any run ends
            over = "random_real_soft" if soft else "random_real"
            row["methods"][method] = {
                "accuracy": _stat(accuracy[method]), "seeds": sorted(accuracy[method]),
                "hard_labels": _stat(hard_labels[method]), "labels": "soft" if soft else "hard",
                "gain": {**gain, "over": over} if (gain := _paired(accuracy[method], baselines[over])) else None,
                "coupling": mean_std(coupling[method]) if coupling[method] else None,
                "controls": {name: mean_std(values) for name, values in controls[method].items()},
                "kept": {"seeds": sorted(kept[method]), "iterations": [kept[method][s] for s in sorted(kept[method])],
                         "points": points.get(method)} if kept[method] else None,
                "lr_img": choices[method] and choices[method]["chosen"],
                "lr_sweep": choices[method] and choices[method]["sweep"]}
        row["random_real"] = _stat(baselines["random_real"])
        row["random_real_soft"] = _stat(baselines["random_real_soft"])
        row["sequential_gain"] = {objective: paired for objective, sequential in SEQUENTIAL.items()
                                  if objective in accuracy and sequential in accuracy
                                  and (paired := _paired(accuracy[sequential], accuracy[objective]))}
        row["paired"] = row["sequential_gain"].get("mtt")
        cells.append(row)
    experts = {seed: mean_std(values) for seed, values in study.expert_accuracy().items() if values}
    all_experts = [v for values in study.expert_accuracy().values() for v in values]
    experts_overall = mean_std(all_experts) if all_experts else None
    for row in cells:
        mtt = (row["methods"].get("mtt") or {}).get("accuracy")
        row["headroom"] = experts_overall["mean"] - mtt["mean"] if experts_overall and mtt else None
    planned_runs = [study.run(planned.id) for planned in spec.plan(chooser(study, spec))]
    return {"study": study.id, "budget": spec.budget, "seeds": spec.seeds, "methods": spec.methods, "cells": cells,
            "lr_img": spec.lr_img, "tune_seeds": spec.tune_seeds,
            "experts": experts, "experts_overall": experts_overall,
            "runs_done": sum(1 for run in planned_runs if run and run.eval()), "runs_total": spec.run_count(),
            "copied_runs": {run.id: origin for run in planned_runs if run and (origin := run.origin())}}


SEQUENTIAL = sequential_counterparts()  # each static method's sequential counterpart
METHOD_LABELS = {m: method_label(m) for m in METHODS}


def _pct(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if not stat:
        return "–"
    sign = "+" if signed else ""
    if stat["n"] == 1:  # no spread to show: one seed is a demonstration
        return f"{100 * stat['mean']:{sign}.2f} (n=1)"
    return f"{100 * stat['mean']:{sign}.2f} ± {100 * stat['std']:.2f} (n={stat['n']})"


def _signed_points(value: float) -> str:
    """A difference in points, signed, with a float tie shown as 0.00 (not -0.00)."""
    return "0.00" if abs(value) <= FLOAT_TIE else f"{100 * value:+.2f}"


def _points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _lr(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _coupling(stat: dict[str, Any] | None) -> str:
    return "–" if not stat else f"{stat['mean']:.3f}"


def _row(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


@dataclass(frozen=True)
class _Layout:
    """What every table of a summary shares: its cells, methods in the catalogue's order and the leading columns."""

    rows: list[dict[str, Any]]
    methods: list[str]
    sweep: bool  # the study chose a pixel lr per cell and method
    soft: bool  # some method learns soft labels
    iterations: bool  # the leading columns name the iterations per subset

    @classmethod
    def of_summary(cls, summary: dict[str, Any]) -> _Layout:
        rows = summary["cells"]
        methods = summary.get("methods") or [m for m in METHOD_LABELS if any(m in row["methods"] for row in rows)]
        sweep = bool(summary.get("lr_img"))
        soft = any((row["methods"].get(m) or {}).get("labels") == "soft" for row in rows for m in methods)
        return cls(rows, methods, sweep, soft, sweep or len({row.get("iterations") for row in rows}) > 1)

    @property
    def head(self) -> list[str]:
        return ["IPC", "subsets"] + (["iterations per subset"] if self.iterations else [])

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(static, sequential) method pairs the study ran both of."""
        return [(a, b) for a, b in SEQUENTIAL.items() if {a, b} <= set(self.methods)]

    def cells(self, row: dict[str, Any]) -> list[str]:
        return [str(row["ipc"]), str(row["subsets"])] + ([str(row.get("iterations", "–"))] if self.iterations else [])

    def table(self, intro: str | None, columns: list[str]) -> list[str]:
        """The intro (if any) and the header of a table whose rows start with the cell columns, blank lines around."""
        return (["", intro] if intro else []) + ["", _row(self.head + columns),
                                                 _row(["---"] * (len(self.head) + len(columns)))]


def _of(row: dict[str, Any], method: str, key: str = "accuracy") -> Any:
    return (row["methods"].get(method) or {}).get(key)


def _fair_lines(t: _Layout) -> list[str]:
    """Each method against random real images trained the same way, labels included (for soft-label studies)."""
    lines = t.table("Fair scores first, since a soft label is partly knowledge distillation: each method against "
                    "random real images trained the same way, labels included (soft labels from the same experts for "
                    "a soft-label method), paired by seed; soft-label sets also evaluated with their top classes as "
                    "hard labels:", ["method", "labels", "accuracy", "with hard labels", "random real, same labels",
                                     "gain over random real"])
    for row in t.rows:
        for method in t.methods:
            gain = _of(row, method, "gain")
            lines.append(_row(t.cells(row) + [METHOD_LABELS[method], _of(row, method, "labels") or "–",
                                              _pct(_of(row, method)), _pct(_of(row, method, "hard_labels")),
                                              _pct(row.get(gain["over"]) if gain else None), _pct(gain, True)]))
    return lines


def _accuracy_lines(t: _Layout) -> list[str]:
    """Each method's accuracy per cell beside random real; with one pair of schedules, its paired difference too
    (more pairs would widen the table past a page, and the paired table lists every pair seed by seed)."""
    shown = t.pairs if len(t.pairs) == 1 else []
    columns = [METHOD_LABELS[m] for m in t.methods] + ["random real"] + (["random real, soft labels"] if t.soft else [])
    columns += [f"{METHOD_LABELS[b]} − {METHOD_LABELS[a].removeprefix('static ')} (paired)" for a, b in shown]
    intro = ("Each method's own accuracy" + (" and the paired difference of the schedules:" if shown
                                             else " (the paired differences follow):")) if t.soft else None
    lines = t.table(intro, columns)
    for row in t.rows:
        lines.append(_row(t.cells(row) + [_pct(_of(row, m)) for m in t.methods] + [_pct(row["random_real"])]
                          + ([_pct(row.get("random_real_soft"))] if t.soft else [])
                          + [_pct(row["sequential_gain"].get(a), True) for a, _ in shown]))
    return lines


def _settings_lines(t: _Layout) -> list[str]:
    """Per cell: the headroom, and each method's pixel lr (when swept) and coupling index side by side."""
    what = "pixel lr, coupling" if t.sweep else "coupling"
    lines = t.table("How each cell's methods were set and came out: headroom (points), "
                    + ("the pixel lr each method used and " if t.sweep else "") + "its coupling index:",
                    ["headroom"] + [f"{METHOD_LABELS[m]}: {what}" for m in t.methods])
    for row in t.rows:
        lines.append(_row(t.cells(row) + [_points(row.get("headroom"))]
                          + [", ".join(([_lr(_of(row, m, "lr_img"))] if t.sweep else [])
                                       + [_coupling(_of(row, m, "coupling"))]) for m in t.methods]))
    return lines


def _paired_lines(t: _Layout) -> list[str]:
    """The paired differences seed by seed, with their 95 % interval and how many seeds favour the sequential
    schedule (no lines without a pair)."""
    found = [(row, static, sequential, paired) for row in t.rows for static, sequential in t.pairs
             if (paired := row["sequential_gain"].get(static))]
    if not found:
        return []
    lines = t.table("Paired differences, sequential − static schedule, in points, seed by seed (the same experts, "
                    "evaluation nets and random-real baseline per seed); 95 % interval: Student t over the paired "
                    "seeds, the range to compare with 0:",
                    ["pair", "per seed", "mean ± std", "95 % interval", "sequential better"])
    for row, static, sequential, paired in found:
        per_seed = ", ".join(f"{seed}: {_signed_points(value)}" for seed, value in zip(paired["seeds"], paired["values"]))
        interval = paired.get("ci95")
        lines.append(_row(t.cells(row) + [f"{METHOD_LABELS[sequential]} − {METHOD_LABELS[static]}", per_seed,
                                          _pct(paired, True),
                                          f"{100 * interval[0]:+.2f} to {100 * interval[1]:+.2f}" if interval else "–",
                                          f"{paired['above']} of {paired['n']}" if "above" in paired else "–"]))
    return lines


def _sweep_lines(t: _Layout, tune_seeds: list[int] | None) -> list[str]:
    """Every lr tried per cell and method on the tune seeds, validation beside test, the choice marked."""
    lines = t.table(f"Pixel-lr sweep on the tune seeds ({'every seed' if tune_seeds is None else tune_seeds}): each "
                    f"method uses, per cell, the lr_img with the best mean validation accuracy (the test column is "
                    f"shown, never used to choose):", ["method", "lr_img", "validation", "test", "chosen"])
    at_edge = False
    for row in t.rows:
        for method, result in row["methods"].items():
            entries = (result or {}).get("lr_sweep") or []
            swept = [entry["lr_img"] for entry in entries]
            for entry in entries:
                mark = choice_mark(entry["lr_img"], result["lr_img"], swept)
                at_edge = at_edge or "tried" in mark
                lines.append(_row(t.cells(row) + [METHOD_LABELS[method], _lr(entry["lr_img"]), _pct(entry["val"]),
                                                  _pct(entry["test"]), mark]))
    if at_edge:
        lines += ["", "A choice at the lowest or highest lr tried is not bracketed: a value beyond the grid may score "
                      "better, so that method may be under-tuned there."]
    return lines


def _points_text(points: list[int] | None) -> str:
    """Selection points, short: "25, 50, 75, 100", or "every 75 to 1000" for a long even run of them."""
    if not points:
        return "–"
    steps = {b - a for a, b in zip(points, points[1:-1])}
    if len(points) > 5 and len(steps) == 1:
        return f"every {steps.pop()} to {points[-1]}"
    return ", ".join(str(p) for p in points)


def _kept_lines(t: _Layout) -> list[str]:
    """Where each reported run kept its sets: the iteration of each subset's best candidate on validation, seed by
    seed (no lines when no run selects)."""
    found = [(row, method, kept) for row in t.rows for method in t.methods if (kept := _of(row, method, "kept"))]
    if not found:
        return []
    lines = t.table("Where each set was kept: the iteration of each subset's best candidate on validation data, seed "
                    "by seed (S1/S2/… for a sequential run; 0: its initial real images). A set kept before the last "
                    "point means later iterations scored lower on validation:",
                    ["method", "selection points", "kept at, per seed"])
    for row, method, kept in found:
        per_seed = ", ".join(f"{seed}: " + "/".join("–" if i is None else str(i) for i in stages)
                             for seed, stages in zip(kept["seeds"], kept["iterations"]))
        lines.append(_row(t.cells(row) + [METHOD_LABELS[method], _points_text(kept.get("points")), per_seed]))
    return lines


def _controls_lines(t: _Layout) -> list[str]:
    """The evaluation-only controls of the sequential sets (no lines when none was measured)."""
    sequential = [m for m in t.methods if m in SEQUENTIAL.values()]
    if not any(_of(row, m, "controls") for row in t.rows for m in sequential):
        return []
    named = len(sequential) > 1
    lines = t.table("Evaluation-only controls of the sequential sets (test accuracy %):",
                    (["method"] if named else []) + ["S1 alone", "all subsets in one stage",
                                                     "S1..S(K-1) + random real last", "the set"])
    for row in t.rows:
        for method in sequential:
            c = _of(row, method, "controls") or {}
            lines.append(_row(t.cells(row) + ([METHOD_LABELS[method]] if named else [])
                              + [_pct(c.get("first_subset_alone")), _pct(c.get("one_stage")),
                                 _pct(c.get("random_last")), _pct(_of(row, method))]))
    return lines


def format_table(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (test accuracy %, mean ± std over seeds): fair scores first where labels are
    soft, then accuracies, settings, paired differences, the lr sweep, where sets were kept and the controls."""
    t = _Layout.of_summary(summary)
    lines = [f"Study `{summary['study']}`: budget convention **{summary['budget']}**, seeds {summary['seeds']}, "
             f"{summary['runs_done']}/{summary['runs_total']} runs done."]
    if summary.get("copied_runs"):
        lines.append(f"{len(summary['copied_runs'])} of them copied from another study where the same run had finished "
                     f"(same config but its name), or restored from this study's archive (`study --restore`); "
                     f"origin.json in each names its source.")
    lines += (_fair_lines(t) if t.soft else []) + _accuracy_lines(t) + _settings_lines(t) + _paired_lines(t)
    lines += (_sweep_lines(t, summary.get("tune_seeds")) if t.sweep else []) + _kept_lines(t) + _controls_lines(t)
    if summary.get("experts_overall"):
        lines += ["", f"Stage-1 experts' final test accuracy: {_pct(summary['experts_overall'])} over "
                      f"{len(summary['experts'])} seed(s). Headroom: the experts' mean minus static MTT's, in points "
                      f"(SeqMatch can only add what the experts know and static MTT misses)."]
    lines += ["", f"Accuracy: mean ± sample std over seeds; a cell with fewer than {EVIDENCE_SEEDS} paired seeds is a "
                  "demonstration, not evidence."]
    return "\n".join(lines) + "\n"
