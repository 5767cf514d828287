"""A study's spec and plan: a grid of cells (IPC, subsets, optionally iterations and seeds) x seeds x methods
under one budget convention, optionally with a pixel-lr sweep chosen on validation data.

    StudySpec.from_dict(raw)      strict: unknown keys, non-whole numbers and impossible values are refused,
                                  naming the field as written (study.grid[0].ipc)
    spec.run_config(cell, seed, method, lr_img)   the RunConfig of one run
    spec.plan(choose)             the runs in the order they run (PlannedRun)

Methods are an objective (MTT, DATM) under a schedule (static: one subset; sequential: SeqMatch's subsets):
mtt, seqmatch (SeqMatch-MTT), datm, seqmatch-datm (config.METHODS).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import (
    BUDGETS,
    METHODS,
    ConfigError,
    RunConfig,
    SubsetConfig,
    apply_overrides,
    as_static,
    build_dataclass,
    load_preset,
    method_parts,
    selection_iterations,
    selects,
    split_ipc,
    without_other_settings,
)

STUDY_PRESETS_DIR = paths.ASSETS_DIR / "studies"
EVIDENCE_SEEDS = 3  # paired seeds a cell needs to count as evidence; with fewer it is a demonstration


@dataclass(frozen=True)
class Cell:
    """One point of the grid: total IPC split into `subsets` SeqMatch subsets (static MTT: one), optionally with
    its own outer iterations per SeqMatch subset (static MTT's follow the budget convention), its own seeds and
    its own settings (`overrides`, key=value as the study's, applied after them)."""

    ipc: int
    subsets: int
    iterations: int | None = None     # per SeqMatch subset; None: the base config's
    seeds: list[int] | None = None    # None: the study's seeds
    overrides: list[str] | None = None  # e.g. ["distill.select_points=0", "distill.select_every=75"]


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
    methods: list[str] = field(default_factory=lambda: ["mtt", "seqmatch"])  # any of config.METHODS
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
            raise ConfigError(f"study.methods: distinct names from {', '.join(METHODS)} (an objective, MTT or DATM, "
                              f"static or sequential as SeqMatch)")
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
            sequential = [m for m in self.methods if method_parts(m)[1] == "sequential"]
            if sequential and cell.subsets < 2:
                raise ConfigError(f"{where}.subsets: IPC {cell.ipc} with {cell.subsets} subset is a static run; "
                                  f"{sequential[0]} needs at least 2 subsets")
            if self.lr_img and not self.tune_seeds_of(cell):
                raise ConfigError(f"{where}: none of its seeds is a tune seed ({self.tune_seeds}); the lr sweep needs "
                                  f"at least one")
            if any(_cell_tag(c) == _cell_tag(cell) for c in self.grid[:i]):
                raise ConfigError(f"{where}: the same cell as an earlier one; give each (ipc, subsets, iterations) once")
        base = self.base_config()
        if self.lr_img and not selects(base.distill):
            raise ConfigError("study.lr_img: choosing an lr needs validation scores; set distill.select_points (or "
                              "select_every) above 0 in the base config")
        for i, cell in enumerate(self.grid):  # every config of the grid validates before anything runs
            for seed in self.cell_seeds(cell):
                for method in self.methods:
                    for lr in self.lr_img or [None]:
                        try:
                            self.run_config(cell, seed, method, lr)
                        except ConfigError as error:
                            raise ConfigError(f"study.grid[{i}] ({method}, seed {seed}): {error}") from None

    def base_config(self) -> RunConfig:
        """The base config, validated; ConfigError naming the field as the spec writes it (study.config.distill.x)."""
        try:
            return RunConfig.from_dict(self.base())
        except ConfigError as error:
            where = "study.config." if self.config is not None else f"study (preset {self.preset!r} + study.overrides): "
            raise ConfigError(f"{where}{error}") from None

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
        if cell.overrides:
            raw = apply_overrides(raw, cell.overrides)
        bases = RunConfig.from_dict(raw).distill.subsets
        subsets = [dataclasses.replace(bases[min(k, len(bases) - 1)], ipc=ipc)
                   for k, ipc in enumerate(split_ipc(cell.ipc, cell.subsets))]
        if cell.iterations is not None:
            subsets = [dataclasses.replace(s, iterations=cell.iterations) for s in subsets]
        objective, schedule = method_parts(method)
        distill = {**without_other_settings(raw.get("distill", {}), objective),
                   "subsets": [_subset_dict(s) for s in subsets], "objective": objective}
        if lr_img is not None:
            distill["lr_img"] = lr_img
        raw = {**raw, "seed": seed, "name": f"{self.name}-{_cell_tag(cell)}", "distill": distill}
        data = raw.get("data", {})
        if data.get("train_per_class") is not None and data["train_per_class"] < cell.ipc:
            raise ConfigError(f"ipc {cell.ipc} needs data.train_per_class >= {cell.ipc} (the base config has "
                              f"{data['train_per_class']})")
        sequential = RunConfig.from_dict(raw)
        return as_static(sequential, self.budget) if schedule == "static" else sequential

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

    def measures_controls(self, planned: PlannedRun, chosen_lr: float | None) -> bool:
        """Whether the study measures the evaluation-only controls of `planned`: every sequential run, or with an lr
        sweep only those at their cell's chosen lr `chosen_lr` (the runs the summary reports)."""
        return self.controls and method_parts(planned.method)[1] == "sequential" and (
            not planned.tuning or chosen_lr == planned.lr_img)

    def every_run(self) -> Iterator[PlannedRun]:
        """Every run the study may make whatever its sweep chooses: each seed of each cell with each method at each
        lr of the sweep (the plan makes some of them)."""
        for cell in self.grid:
            tune = self.tune_seeds_of(cell)
            for seed in self.cell_seeds(cell):
                for lr in self.lr_img or [None]:
                    for method in self.methods:
                        yield PlannedRun(run_id(cell, seed, method, lr), cell, seed, method, lr, seed in tune)

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
