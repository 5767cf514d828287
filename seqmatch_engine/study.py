"""Studies: a grid of ordinary runs (method x IPC x seed) under one budget convention, paired by seed.

    studies/<id>/study.json        the spec (StudySpec) and the base config it expands
                 status.json       state, the run in progress, runs done / total
                 experts.json      test accuracy of each seed's stage-1 experts (the headroom)
                 runs/ipc020-seqmatch-seed1/ ...   ordinary run folders (RunFolder)
                 summary.json, summary.md          the table, rebuilt from the runs after each one

Pairing: a seed's runs share everything but the method. Both methods of a seed train against
the same cached stage-1 experts, their evaluation nets are drawn from the same generators, and
the random-real baseline is measured once per (seed, IPC) and shared. Resuming a study skips
finished runs and continues an interrupted one from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import paths
from .config import (
    BUDGETS,
    ConfigError,
    RunConfig,
    SubsetConfig,
    apply_overrides,
    as_static,
    build_dataclass,
    load_preset,
    selection_iterations,
    selects,
    split_ipc,
)
from .ownership import OwnerLock
from .records import RunState
from .runs import RunError, RunFolder, find_folder, place_folder
from .storage import read_json, write_json, write_text

METHODS = ("mtt", "seqmatch")
STUDY_PRESETS_DIR = paths.ASSETS_DIR / "studies"


@dataclass(frozen=True)
class Cell:
    """One point of the grid: total IPC split into `subsets` SeqMatch subsets (static MTT: one), optionally with
    its own outer iterations per SeqMatch subset (static MTT's follow the budget convention) and its own seeds."""

    ipc: int
    subsets: int
    iterations: int | None = None     # per SeqMatch subset; None: the base config's
    seeds: list[int] | None = None    # None: the study's seeds


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study's plan."""

    id: str
    cell: Cell
    seed: int
    method: str
    lr_img: float | None   # the pixel lr of the sweep; None: the base config's (no sweep)
    tuning: bool           # a run of the lr sweep on a tune seed (every lr runs there)


LrChooser = Callable[[Cell, str], "float | None"]  # (cell, method) -> the chosen lr_img, None while undecided


@dataclass
class StudySpec:
    name: str
    preset: str | None = None            # base config: a preset name, or `config` (a full raw config)
    config: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)  # key=value, as the CLI's --set
    grid: list[Cell] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    budget: str = "per-image"
    controls: bool = True                # evaluation-only controls for every SeqMatch run (at its chosen lr)
    # A pixel-lr sweep: on the tune seeds every value runs, for every method and cell; each method then uses, at
    # each cell, the value with the best mean validation accuracy there (never test accuracy) for every seed.
    # []: no sweep, the base config's distill.lr_img.
    lr_img: list[float] = field(default_factory=list)
    tune_seeds: list[int] | None = None  # the seeds that run every lr_img; None: all of a cell's seeds

    @classmethod
    def from_dict(cls, raw: Any) -> "StudySpec":
        if not isinstance(raw, dict):
            raise ConfigError("study: expected a JSON object with name, preset (or config), grid, seeds, methods, budget")
        spec = build_dataclass(cls, raw, "study")
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def validate(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,60}", self.name):
            raise ConfigError(f"study.name: {str(self.name)[:80]!r} must be 1-60 letters, digits, '-' or '_'")
        if (self.preset is None) == (self.config is None):
            raise ConfigError("study: give exactly one of preset (a preset name) or config (a full config object)")
        if not self.grid:
            raise ConfigError('study.grid: needs at least one cell, e.g. [{"ipc": 10, "subsets": 2}]')
        _require_distinct(self.seeds, "study.seeds", "needs distinct whole numbers, e.g. [0, 1, 2]")
        if not self.methods or len(set(self.methods)) != len(self.methods) or any(m not in METHODS for m in self.methods):
            raise ConfigError(f"study.methods: distinct names from {', '.join(METHODS)}")
        if self.budget not in BUDGETS:
            raise ConfigError(f"study.budget: must be one of {', '.join(BUDGETS)}")
        if any(lr <= 0 for lr in self.lr_img) or len(set(self.lr_img)) != len(self.lr_img):
            raise ConfigError("study.lr_img: distinct values > 0, e.g. [1000, 300, 100], or [] for the base's")
        if self.tune_seeds is not None:
            if not self.lr_img:
                raise ConfigError("study.tune_seeds: only with an lr sweep (study.lr_img); remove it or add the sweep")
            _require_distinct(self.tune_seeds, "study.tune_seeds", "needs distinct whole numbers, e.g. [0]")
        for i, cell in enumerate(self.grid):
            where = f"study.grid[{i}]"
            for name in ("ipc", "subsets", "iterations"):
                value = getattr(cell, name)
                if value is not None and value < 1:
                    raise ConfigError(f"{where}.{name}: must be >= 1, got {value}")
            if cell.seeds is not None:
                _require_distinct(cell.seeds, f"{where}.seeds", "needs distinct whole numbers, or leave it out for "
                                                                 "the study's seeds")
            try:
                split_ipc(cell.ipc, cell.subsets)
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None
            if "seqmatch" in self.methods and cell.subsets < 2:
                raise ConfigError(f"{where}.subsets: IPC {cell.ipc} with {cell.subsets} subset is static MTT; "
                                  f"SeqMatch needs at least 2 subsets")
            if self.lr_img and not self.tune_seeds_of(cell):
                raise ConfigError(f"{where}: none of its seeds is a tune seed ({self.tune_seeds}); the lr sweep needs "
                                  f"at least one")
            if any(c == cell for c in self.grid[:i]):
                raise ConfigError(f"{where}: the same cell as an earlier one; give each (ipc, subsets, iterations) once")
        if self.lr_img and not selects(RunConfig.from_dict(self.base()).distill):
            raise ConfigError("study.lr_img: choosing an lr needs validation scores; set distill.select_points (or "
                              "select_every) above 0 in the base config")
        for cell in self.grid:
            for seed in self.cell_seeds(cell):
                for method in self.methods:
                    for lr in self.lr_img or [None]:
                        self.run_config(cell, seed, method, lr)  # every config of the grid validates before anything runs

    def base(self) -> dict[str, Any]:
        raw = load_preset(self.preset) if self.preset is not None else self.config
        return apply_overrides(raw, self.overrides)

    def cell_seeds(self, cell: Cell) -> list[int]:
        return list(self.seeds if cell.seeds is None else cell.seeds)

    def tune_seeds_of(self, cell: Cell) -> list[int]:
        """The seeds of `cell` that run every value of the lr sweep ([] without a sweep)."""
        if not self.lr_img:
            return []
        return [s for s in self.cell_seeds(cell) if self.tune_seeds is None or s in self.tune_seeds]

    def run_config(self, cell: Cell, seed: int, method: str, lr_img: float | None = None) -> RunConfig:
        """The config of one run: the base with the cell's subsets (subset k takes the base's subset k, or
        its last, for interval, iterations and initial lr; the cell's iterations replace every subset's) and
        the seed (and the sweep's lr_img); static MTT by the budget convention."""
        raw = self.base()
        bases = RunConfig.from_dict(raw).distill.subsets
        subsets = [dataclasses.replace(bases[min(k, len(bases) - 1)], ipc=ipc)
                   for k, ipc in enumerate(split_ipc(cell.ipc, cell.subsets))]
        if cell.iterations is not None:
            subsets = [dataclasses.replace(s, iterations=cell.iterations) for s in subsets]
        distill = {**raw.get("distill", {}), "subsets": [_subset_dict(s) for s in subsets]}
        if lr_img is not None:
            distill["lr_img"] = lr_img
        raw = {**raw, "seed": seed, "name": f"{self.name}-{_cell_tag(cell)}", "distill": distill}
        data = raw.get("data", {})
        if data.get("train_per_class") is not None and data["train_per_class"] < cell.ipc:
            raise ConfigError(f"study.grid: IPC {cell.ipc} needs data.train_per_class >= {cell.ipc}")
        seqmatch = RunConfig.from_dict(raw)
        return as_static(seqmatch, self.budget) if method == "mtt" else seqmatch

    def plan(self, choose: LrChooser | None = None) -> Iterator[PlannedRun]:
        """The runs in the order they run: cell by cell; in a cell, every seed with every method, except that with an
        lr sweep the tune seeds run every lr first, then the other seeds run each method's chosen lr. `choose` is
        asked for a cell's choice only after its tuning runs were taken from this generator (a study runs them
        first); without `choose`, or while it answers None, those runs are left out (run_count counts them)."""
        for cell in self.grid:
            tune = self.tune_seeds_of(cell)
            for seed in tune:
                for lr in self.lr_img:
                    for method in self.methods:
                        yield PlannedRun(run_id(cell, seed, method, lr), cell, seed, method, lr, True)
            for seed in self.cell_seeds(cell):
                if seed in tune:
                    continue
                for method in self.methods:
                    lr = (choose(cell, method) if choose else None) if self.lr_img else None
                    if not self.lr_img or lr is not None:
                        yield PlannedRun(run_id(cell, seed, method, lr), cell, seed, method, lr, False)

    def run_count(self) -> int:
        """How many runs the study has once every lr choice is made."""
        per_cell = (len(self.tune_seeds_of(cell)) * (len(self.lr_img) - 1) + len(self.cell_seeds(cell))
                    for cell in self.grid)
        return sum(per_cell) * len(self.methods)


def _require_distinct(values: list[int], where: str, message: str) -> None:
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"{where}: {message}")


def _subset_dict(subset: SubsetConfig) -> dict[str, Any]:
    return {"ipc": subset.ipc, "interval": list(subset.interval), "iterations": subset.iterations,
            "lr_init": subset.lr_init}


def _cell_tag(cell: Cell) -> str:
    return f"ipc{cell.ipc}-k{cell.subsets}" + (f"-it{cell.iterations}" if cell.iterations is not None else "")


def run_id(cell: Cell, seed: int, method: str, lr_img: float | None = None) -> str:
    """ipc020-k2-mtt-seed1; with the cell's iterations and a sweep's lr: ipc020-k2-it1000-lr300-mtt-seed1."""
    parts = [f"ipc{cell.ipc:03d}", f"k{cell.subsets}"]
    if cell.iterations is not None:
        parts.append(f"it{cell.iterations}")
    if lr_img is not None:
        parts.append("lr" + f"{lr_img:g}".replace(".", "p").replace("+", ""))
    return "-".join([*parts, method, f"seed{seed}"])


def study_preset_names() -> list[str]:
    return sorted(p.stem for p in STUDY_PRESETS_DIR.glob("*.json"))


def load_study_spec(source: str) -> StudySpec:
    """A study spec from a study preset name (assets/studies/) or a JSON file path."""
    if source in study_preset_names():
        return StudySpec.from_dict(json.loads((STUDY_PRESETS_DIR / f"{source}.json").read_text()))
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"study {source!r}: neither a study preset ({', '.join(study_preset_names())}) "
                          f"nor a JSON file (looked for {path.resolve()})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"study file {path.resolve()} is not valid JSON: {error}") from None
    return StudySpec.from_dict(raw)


class StudyFolder:
    """One study on disk (the only code that reads or writes a study folder)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def existing(cls, root: Path, spec: StudySpec) -> "StudyFolder | None":
        """studies/<spec.name>/ when it holds this spec, None when there is no such study; ConfigError when it
        holds another spec."""
        study = cls(paths.child(root, spec.name, "study"))
        if not (study.path / paths.STUDY_FILE).is_file():
            return None
        if study.spec().to_dict() != spec.to_dict():
            raise ConfigError(f"study {spec.name!r} exists in {study.path} with another spec; give the study another "
                              f"name, or delete that folder to start it over")
        return study

    @classmethod
    def create_or_open(cls, root: Path, spec: StudySpec) -> "StudyFolder":
        """studies/<spec.name>/, created whole with the spec (runs.place_folder), or reopened when it holds the
        same spec (also when another process has just created it)."""
        study = cls.existing(root, spec)
        if study is not None:
            return study

        def fill(folder: Path) -> None:
            write_json(folder / paths.STUDY_FILE, spec.to_dict())
            cls(folder).update_status(state=RunState.CREATED, done=0, total=spec.run_count(), created=time.time())

        Path(root).mkdir(parents=True, exist_ok=True)
        try:
            return cls(place_folder(Path(root), [spec.name], fill, "study"))
        except RunError:
            study = cls.existing(root, spec)
            if study is None:
                raise
            return study

    @classmethod
    def find(cls, root: Path, study_id: object) -> "StudyFolder":
        return cls(find_folder(root, study_id, "study", paths.STUDY_FILE))

    @property
    def id(self) -> str:
        return self.path.name

    def lock(self) -> OwnerLock:
        """The study's owner lock, held by the process that runs it (the CLI or an app's queue)."""
        return OwnerLock(self.path / paths.LOCK_FILE, f"study {self.id}",
                         "Let it run there or stop it (Stop in its app's Studies tab, Ctrl-C in its terminal); a "
                         "killed owner frees the study at once. To continue it as soon as it is free, run the same "
                         "command with --wait")

    @property
    def runs_root(self) -> Path:
        return self.path / paths.STUDY_RUNS_DIR

    def spec(self) -> StudySpec:
        return StudySpec.from_dict(read_json(self.path / paths.STUDY_FILE))

    def status(self) -> dict[str, Any]:
        path = self.path / paths.STUDY_STATUS_FILE
        return read_json(path) if path.exists() else {}

    def update_status(self, **fields: Any) -> None:
        write_json(self.path / paths.STUDY_STATUS_FILE, {**self.status(), **fields, "updated": time.time()})

    def last_activity(self) -> float:
        """When the study or its run in progress last wrote a file (a time stamp)."""
        files = [self.path / paths.STUDY_STATUS_FILE]
        current = self.status().get("current")
        if current and self.run(current):
            files += [self.run(current).path / name for name in (paths.STATUS_FILE, paths.METRICS_FILE)]
        return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)

    def run(self, rid: str) -> RunFolder | None:
        path = self.runs_root / rid
        return RunFolder(path) if (path / paths.CONFIG_FILE).is_file() else None

    def chooser(self) -> LrChooser:
        """The lr each method uses at a cell, as the finished tuning runs choose it (None while undecided)."""
        def choose(cell: Cell, method: str) -> float | None:
            choice = lr_choice(self, cell, method)
            return choice["chosen"] if choice else None
        return choose

    def expert_accuracy(self) -> dict[str, Any]:
        path = self.path / paths.STUDY_EXPERTS_FILE
        return read_json(path) if path.exists() else {}

    def save_expert_accuracy(self, seed: int, values: list[float]) -> None:
        write_json(self.path / paths.STUDY_EXPERTS_FILE, {**self.expert_accuracy(), str(seed): values})

    def save_summary(self, summary: dict[str, Any], table: str) -> None:
        write_json(self.path / paths.STUDY_SUMMARY_FILE, summary)
        write_text(self.path / paths.STUDY_TABLE_FILE, table)

    def summary(self) -> dict[str, Any] | None:
        path = self.path / paths.STUDY_SUMMARY_FILE
        return read_json(path) if path.exists() else None


def list_studies(root: Path) -> list[StudyFolder]:
    root = Path(root)
    if not root.exists():
        return []
    return sorted((StudyFolder(p) for p in root.iterdir() if not p.name.startswith(".") and paths.inside(root, p)
                   and (p / paths.STUDY_FILE).is_file()), key=lambda s: s.id)


# -- the summary: a pure function of the run folders ------------------------------------------------------
def mean_std(values: list[float]) -> dict[str, Any]:
    """{"mean", "std", "n", "values"}; std is the sample standard deviation (n - 1), 0 for one value."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def lr_choice(study: StudyFolder, cell: Cell, method: str) -> dict[str, Any] | None:
    """The lr sweep of `method` at `cell` on the tune seeds: {"chosen": lr or None while a tuning run is unfinished,
    "sweep": [{"lr_img", "val", "test"} per value, mean_std over the tune seeds that finished]}; None without a sweep.
    The chosen value has the best mean validation accuracy (ties: the earlier value of study.lr_img)."""
    spec = study.spec()
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


# -- running a study -------------------------------------------------------------------------------------
RunHook = Callable[[str, int, int], None]  # (run id, index, total) before each run


def run_study(study: StudyFolder, experts_root: Path, observer=None, control=None,
              on_run: RunHook | None = None, executor=None) -> dict[str, Any]:
    """Run (or resume) every run of the study, then return the summary. Finished runs are skipped, an interrupted
    one resumes from its checkpoint; the summary is rewritten after each run. Locally the runs go one after another
    in plan order (their experts and nets as jobs on `executor`, default: local threads); on a Dask executor the
    runs themselves are jobs too and distil at once (study_cluster.py). Owns the study meanwhile (its lock:
    ownership.Owned, and nothing written, when another process runs it)."""
    with study.lock().hold():
        return _run_study(study, experts_root, observer, control, on_run, executor)


def _run_study(study: StudyFolder, experts_root: Path, observer, control, on_run: RunHook | None,
               executor) -> dict[str, Any]:
    from .control import RunControl, StopRequested
    from .executors import DaskExecutor
    from .seqmatch import Distiller

    spec, control = study.spec(), control or RunControl()
    total = spec.run_count()
    study.update_status(state=RunState.RUNNING, started=time.time(), total=total)

    def open_run(planned: PlannedRun) -> RunFolder:
        config = spec.run_config(planned.cell, planned.seed, planned.method, planned.lr_img)
        run = study.run(planned.id) or RunFolder.create(study.runs_root, config, planned.id)
        if not same_run(run.config(), config):
            raise ConfigError(f"{run.path} holds another config than the study's plan; delete that run folder")
        return run

    def starting(run_id: str, index: int, count: int) -> None:
        study.update_status(current=run_id, index=index)
        if on_run:
            on_run(run_id, index, count)

    def finish(planned: PlannedRun, run: RunFolder) -> None:
        record_run(study, planned, run, experts_root, executor, control)

    try:
        if isinstance(executor, DaskExecutor):
            from .study_cluster import run_on_cluster

            run_on_cluster(study, experts_root, executor, open_run, finish, control, starting)
        else:
            for index, planned in enumerate(spec.plan(study.chooser())):
                run = open_run(planned)
                starting(planned.id, index, total)
                if run.status().get("state") != RunState.DONE:
                    if Distiller(run, experts_root, observer, control, executor=executor).run() is None:
                        raise StopRequested()
                finish(planned, run)
    except StopRequested:
        study.update_status(state=RunState.STOPPED, current=None)
        raise
    except Exception as error:
        study.update_status(state=RunState.FAILED, current=None, error=f"{type(error).__name__}: {error}")
        raise
    except BaseException:  # Ctrl-C, SIGTERM (through the CLI's handler), SystemExit
        study.update_status(state=RunState.STOPPED, current=None, error=None)
        raise
    summary = summarise(study)
    study.save_summary(summary, format_table(summary))
    study.update_status(state=RunState.DONE, current=None, finished=time.time(), done=summary["runs_done"])
    return summary


def record_run(study: StudyFolder, planned: PlannedRun, run: RunFolder, experts_root: Path, executor, control) -> None:
    """After a run of the study finished: its seed's expert accuracy (once), the controls now due, the summary."""
    from .context import RunContext

    if str(planned.seed) not in study.expert_accuracy():
        study.save_expert_accuracy(planned.seed, expert_accuracy(RunContext(run.config(), experts_root,
                                                                            executor=executor)))
    for pending in runs_needing_controls(study):
        ctx = RunContext(pending.config(), experts_root, executor=executor)
        pending.save_controls(evaluate_controls(ctx, pending, control))
    summary = summarise(study)
    study.save_summary(summary, format_table(summary))
    study.update_status(done=summary["runs_done"])


def same_run(a: RunConfig, b: RunConfig) -> bool:
    """Whether two configs describe the same run: equal, or equal but for how the same selection points are written
    (select_every 25 or select_points 4 at 100 iterations), so a study made before select_points resumes."""
    def schedule(config: RunConfig) -> tuple:
        d = config.distill
        return tuple(tuple(selection_iterations(s.iterations, d.select_every, d.select_points)) for s in d.subsets)

    def rest(config: RunConfig) -> dict[str, Any]:
        raw = config.to_dict()
        raw["distill"].pop("select_every"), raw["distill"].pop("select_points")
        return raw

    return a == b or (schedule(a) == schedule(b) and rest(a) == rest(b))


def runs_needing_controls(study: StudyFolder) -> list[RunFolder]:
    """Finished SeqMatch runs whose controls are not measured yet: every one, or with an lr sweep only those at
    their cell's chosen lr (the runs the summary reports)."""
    spec = study.spec()
    if not spec.controls or "seqmatch" not in spec.methods:
        return []
    choose, pending = study.chooser(), []
    for planned in spec.plan(choose):
        if planned.method != "seqmatch" or (planned.tuning and choose(planned.cell, "seqmatch") != planned.lr_img):
            continue
        run = study.run(planned.id)
        if run and run.eval() and run.controls() is None:
            pending.append(run)
    return pending


def expert_accuracy(ctx) -> list[float]:
    """Test accuracy of the final epoch of each stage-1 expert of a run's recipe (read from the cache)."""
    from .evaluate import accuracy
    from .models import ConvNet

    data = ctx.data
    return [accuracy(ConvNet(ctx.spec, trajectory[-1].to(ctx.device)), data.test_images, data.test_labels)
            for trajectory in ctx.cached_stage1_experts()]


def evaluate_controls(ctx, run: RunFolder, control=None) -> dict[str, Any]:
    """Test accuracy of a SeqMatch set's evaluation-only controls (evaluate.CONTROLS), on the same evaluation nets
    (same seed tag) as the set itself, so that each control is paired with it."""
    from .evaluate import control_curricula

    cfg = ctx.config
    subsets = run.subsets()
    curricula = control_curricula([(s.images, s.labels) for s in subsets], [s.lr for s in subsets], ctx.data, cfg.seed)
    accuracy = {name: ctx.evaluate(stages, "convnet", cfg.eval.num_nets, "test", "synthetic", control=control).to_dict()
                for name, stages in curricula.items()}
    return {"accuracy": accuracy, "eval_nets": cfg.eval.num_nets}
