"""A study's summary: a pure function of its run folders (each run's own eval.json, never another evaluation),
as a dict (summary.json) and as markdown tables (summary.md)."""
from __future__ import annotations

from typing import Any

from .config import RunConfig
from .study import StudyFolder, lr_choice, mean_std, run_id


def summarise(study: StudyFolder) -> dict[str, Any]:
    """Per cell and method (at its chosen lr when the study sweeps lr_img): the mean over seeds of each run's mean
    test accuracy (ConvNet), its std over seeds, the random-real baseline, the paired difference SeqMatch - MTT per
    seed, the coupling index and the controls; plus each seed's expert accuracy (the headroom)."""
    from .diagnostics import coupling_index
    from .diagnostics.store import read_g1

    spec = study.spec()
    base_iterations = RunConfig.from_dict(spec.base()).distill.subsets[0].iterations
    cells = []
    for cell in sorted(spec.grid, key=lambda c: (c.ipc, c.subsets, c.iterations or base_iterations)):
        row: dict[str, Any] = {"ipc": cell.ipc, "subsets": cell.subsets,
                               "iterations": cell.iterations or base_iterations, "methods": {}, "paired": None}
        per_seed: dict[str, dict[int, float]] = {}
        baseline, coupling, controls = {}, {}, {}
        choices = {method: lr_choice(study, cell, method) for method in spec.methods}
        for seed in spec.cell_seeds(cell):
            for method in spec.methods:
                choice = choices[method]
                if choice is not None and choice["chosen"] is None:
                    continue  # the sweep is not finished: no lr is chosen yet
                run = study.run(run_id(cell, seed, method, choice and choice["chosen"]))
                result = run.eval() if run else None
                if not result or result.accuracy() is None:
                    continue
                per_seed.setdefault(method, {})[seed] = result.accuracy()["mean"]
                if result.accuracy("random_real"):
                    baseline[seed] = result.accuracy("random_real")["mean"]
                index = coupling_index(read_g1(run.path))
                if index is not None:
                    coupling.setdefault(method, []).append(index)
                for name, acc in (run.controls() or {}).get("accuracy", {}).items():
                    controls.setdefault(name, []).append(acc["mean"])
        for method in spec.methods:
            values = per_seed.get(method)
            if values or choices[method]:
                row["methods"][method] = {
                    "accuracy": mean_std(list(values.values())) if values else None, "seeds": sorted(values or {}),
                    "coupling": mean_std(coupling[method]) if coupling.get(method) else None,
                    "lr_img": choices[method] and choices[method]["chosen"],
                    "lr_sweep": choices[method] and choices[method]["sweep"]}
        row["random_real"] = mean_std(list(baseline.values())) if baseline else None
        row["controls"] = {name: mean_std(values) for name, values in controls.items()}
        paired = sorted(set(per_seed.get("mtt", {})) & set(per_seed.get("seqmatch", {})))
        if paired:
            differences = [per_seed["seqmatch"][s] - per_seed["mtt"][s] for s in paired]
            row["paired"] = {**mean_std(differences), "seeds": paired}
        cells.append(row)
    experts = {seed: mean_std(values) for seed, values in study.expert_accuracy().items() if values}
    all_experts = [v for values in study.expert_accuracy().values() for v in values]
    experts_overall = mean_std(all_experts) if all_experts else None
    for row in cells:
        mtt = (row["methods"].get("mtt") or {}).get("accuracy")
        row["headroom"] = experts_overall["mean"] - mtt["mean"] if experts_overall and mtt else None
    return {"study": study.id, "budget": spec.budget, "seeds": spec.seeds, "cells": cells,
            "lr_img": spec.lr_img, "tune_seeds": spec.tune_seeds,
            "experts": experts, "experts_overall": experts_overall,
            "runs_done": sum(1 for planned in spec.plan(study.chooser()) if (run := study.run(planned.id)) and run.eval()),
            "runs_total": spec.run_count()}


def _pct(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if not stat:
        return "–"
    sign = "+" if signed else ""
    if stat["n"] == 1:  # no spread to show: one seed is a demonstration
        return f"{100 * stat['mean']:{sign}.2f} (n=1)"
    return f"{100 * stat['mean']:{sign}.2f} ± {100 * stat['std']:.2f} (n={stat['n']})"


def _points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _lr(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def format_table(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (test accuracy %, mean ± std over seeds)."""
    rows = summary["cells"]
    sweep = bool(summary.get("lr_img"))
    iterations = sweep or len({row.get("iterations") for row in rows}) > 1

    def cells(row: dict[str, Any]) -> list[str]:
        return [str(row["ipc"]), str(row["subsets"])] + ([str(row.get("iterations", "–"))] if iterations else [])

    def accuracy(row: dict[str, Any], method: str) -> str:
        return _pct((row["methods"].get(method) or {}).get("accuracy"))

    head = ["IPC", "subsets"] + (["iterations per subset"] if iterations else [])
    columns = head + ["static MTT", "SeqMatch", "random real", "SeqMatch − MTT (paired)"] + \
        (["pixel lr MTT / SeqMatch"] if sweep else []) + ["coupling MTT / SeqMatch", "headroom"]
    lines = [f"Study `{summary['study']}`: budget convention **{summary['budget']}**, seeds {summary['seeds']}, "
             f"{summary['runs_done']}/{summary['runs_total']} runs done.", "", _row(columns), _row(["---"] * len(columns))]
    for row in rows:
        methods = [row["methods"].get(m) for m in ("mtt", "seqmatch")]
        coupling = " / ".join(f"{m['coupling']['mean']:.3f}" if m and m.get("coupling") else "–" for m in methods)
        lrs = [" / ".join(_lr(m and m.get("lr_img")) for m in methods)] if sweep else []
        lines.append(_row(cells(row) + [accuracy(row, "mtt"), accuracy(row, "seqmatch"), _pct(row["random_real"]),
                                        _pct(row["paired"], True), *lrs, coupling, _points(row.get("headroom"))]))
    if sweep:
        tune = summary.get("tune_seeds")
        lines += ["", f"Pixel-lr sweep on the tune seeds ({'every seed' if tune is None else tune}): each method uses, "
                      f"per cell, the lr_img with the best mean validation accuracy (the test column is shown, never "
                      f"used to choose):", "",
                  _row(head + ["method", "lr_img", "validation", "test", "chosen"]), _row(["---"] * (len(head) + 5))]
        for row in rows:
            for method, result in row["methods"].items():
                for entry in (result or {}).get("lr_sweep") or []:
                    chosen = "✓" if entry["lr_img"] == result["lr_img"] else ""
                    lines.append(_row(cells(row) + [METHOD_LABELS[method], _lr(entry["lr_img"]), _pct(entry["val"]),
                                                    _pct(entry["test"]), chosen]))
    if any(row["controls"] for row in rows):
        columns = head + ["S1 alone", "all subsets in one stage", "S1..S(K-1) + random real last", "SeqMatch"]
        lines += ["", "Evaluation-only controls of the SeqMatch sets (test accuracy %):", "", _row(columns),
                  _row(["---"] * len(columns))]
        for row in rows:
            c = row["controls"]
            lines.append(_row(cells(row) + [_pct(c.get("first_subset_alone")), _pct(c.get("one_stage")),
                                            _pct(c.get("random_last")), accuracy(row, "seqmatch")]))
    if summary.get("experts_overall"):
        lines += ["", f"Stage-1 experts' final test accuracy: {_pct(summary['experts_overall'])} over "
                      f"{len(summary['experts'])} seed(s). Headroom: the experts' mean minus static MTT's, in points "
                      f"(SeqMatch can only add what the experts know and static MTT misses)."]
    lines += ["", "Accuracy: mean ± sample std over seeds; a cell with fewer than 3 paired seeds is a demonstration, "
                  "not evidence."]
    return "\n".join(lines) + "\n"


METHOD_LABELS = {"mtt": "static MTT", "seqmatch": "SeqMatch"}


def _row(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"
