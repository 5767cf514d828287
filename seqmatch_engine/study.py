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
from typing import Any, Callable

from . import paths
from .config import BUDGETS, ConfigError, RunConfig, SubsetConfig, apply_overrides, as_static, load_preset, split_ipc
from .records import RunState
from .runs import RunFolder, find_folder
from .storage import read_json, write_json, write_text

METHODS = ("mtt", "seqmatch")
STUDY_PRESETS_DIR = paths.ASSETS_DIR / "studies"


@dataclass(frozen=True)
class Cell:
    """One point of the grid: total IPC split into `subsets` SeqMatch subsets (static MTT: one)."""

    ipc: int
    subsets: int


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
    controls: bool = True                # evaluation-only controls for every SeqMatch run

    @classmethod
    def from_dict(cls, raw: Any) -> "StudySpec":
        if not isinstance(raw, dict):
            raise ConfigError("study: expected a JSON object with name, preset (or config), grid, seeds, methods, budget")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"study.{unknown[0]}: unknown setting; known settings: {', '.join(sorted(known))}")
        try:
            grid = [Cell(int(c["ipc"]), int(c["subsets"])) for c in raw.get("grid", [])]
        except (KeyError, TypeError, ValueError):
            raise ConfigError('study.grid: expected a list of {"ipc": N, "subsets": K}') from None
        spec = cls(**{**raw, "grid": grid})
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
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(isinstance(s, int) for s in self.seeds):
            raise ConfigError("study.seeds: needs distinct whole numbers, e.g. [0, 1, 2]")
        if not self.methods or any(m not in METHODS for m in self.methods):
            raise ConfigError(f"study.methods: choose from {', '.join(METHODS)}")
        if self.budget not in BUDGETS:
            raise ConfigError(f"study.budget: must be one of {', '.join(BUDGETS)}")
        for cell in self.grid:
            split_ipc(cell.ipc, cell.subsets)  # raises with the fix when impossible
            if "seqmatch" in self.methods and cell.subsets < 2:
                raise ConfigError(f"study.grid: IPC {cell.ipc} with {cell.subsets} subset is static MTT; "
                                  f"SeqMatch needs at least 2 subsets")
        for cell in self.grid:
            for seed in self.seeds:
                for method in self.methods:
                    self.run_config(cell, seed, method)  # every config of the grid validates before anything runs

    def base(self) -> dict[str, Any]:
        raw = load_preset(self.preset) if self.preset is not None else self.config
        return apply_overrides(raw, self.overrides)

    def run_config(self, cell: Cell, seed: int, method: str) -> RunConfig:
        """The config of one run: the base with the cell's subsets (subset k takes the base's subset k, or
        its last, for interval, iterations and initial lr) and the seed; static MTT by the budget convention."""
        raw = self.base()
        bases = RunConfig.from_dict(raw).distill.subsets
        subsets = [dataclasses.replace(bases[min(k, len(bases) - 1)], ipc=ipc)
                   for k, ipc in enumerate(split_ipc(cell.ipc, cell.subsets))]
        raw = {**raw, "seed": seed, "name": f"{self.name}-ipc{cell.ipc}-k{cell.subsets}",
               "distill": {**raw.get("distill", {}), "subsets": [_subset_dict(s) for s in subsets]}}
        data = raw.get("data", {})
        if data.get("train_per_class") is not None and data["train_per_class"] < cell.ipc:
            raise ConfigError(f"study.grid: IPC {cell.ipc} needs data.train_per_class >= {cell.ipc}")
        seqmatch = RunConfig.from_dict(raw)
        return as_static(seqmatch, self.budget) if method == "mtt" else seqmatch

    def plan(self) -> list[tuple[str, Cell, int, str]]:
        """(run id, cell, seed, method) in the order they run: cell by cell, every seed, both methods,
        so that the smaller IPCs are complete (all seeds) first."""
        return [(run_id(cell, seed, method), cell, seed, method)
                for cell in self.grid for seed in self.seeds for method in self.methods]


def _subset_dict(subset: SubsetConfig) -> dict[str, Any]:
    return {"ipc": subset.ipc, "interval": list(subset.interval), "iterations": subset.iterations,
            "lr_init": subset.lr_init}


def run_id(cell: Cell, seed: int, method: str) -> str:
    return f"ipc{cell.ipc:03d}-k{cell.subsets}-{method}-seed{seed}"


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
    def create_or_open(cls, root: Path, spec: StudySpec) -> "StudyFolder":
        """studies/<spec.name>/, created with the spec, or reopened when it holds the same spec."""
        path = paths.child(root, spec.name, "study")
        study = cls(path)
        if (path / paths.STUDY_FILE).is_file():
            if study.spec().to_dict() != spec.to_dict():
                raise ConfigError(f"study {spec.name!r} exists in {path} with another spec; give the study another "
                                  f"name, or delete that folder to start it over")
            return study
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / paths.STUDY_FILE, spec.to_dict())
        study.update_status(state=RunState.CREATED, done=0, total=len(spec.plan()), created=time.time())
        return study

    @classmethod
    def find(cls, root: Path, study_id: object) -> "StudyFolder":
        return cls(find_folder(root, study_id, "study", paths.STUDY_FILE))

    @property
    def id(self) -> str:
        return self.path.name

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
    return sorted((StudyFolder(p) for p in root.iterdir() if (p / paths.STUDY_FILE).is_file()), key=lambda s: s.id)


# -- the summary: a pure function of the run folders ------------------------------------------------------
def mean_std(values: list[float]) -> dict[str, Any]:
    """{"mean", "std", "n", "values"}; std is the sample standard deviation (n - 1), 0 for one value."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def summarise(study: StudyFolder) -> dict[str, Any]:
    """Per cell and method: the mean over seeds of each run's mean test accuracy (ConvNet), its std over
    seeds, the random-real baseline, the paired difference SeqMatch - MTT per seed, the coupling index and
    the controls; plus each seed's expert accuracy (the headroom)."""
    from .diagnostics import coupling_index
    from .diagnostics.store import read_g1

    spec = study.spec()
    cells = []
    for cell in spec.grid:
        row: dict[str, Any] = {"ipc": cell.ipc, "subsets": cell.subsets, "methods": {}, "paired": None}
        per_seed: dict[str, dict[int, float]] = {}
        baseline, coupling, controls = {}, {}, {}
        for seed in spec.seeds:
            for method in spec.methods:
                run = study.run(run_id(cell, seed, method))
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
        for method, values in per_seed.items():
            row["methods"][method] = {"accuracy": mean_std(list(values.values())), "seeds": sorted(values),
                                      "coupling": mean_std(coupling[method]) if coupling.get(method) else None}
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
        mtt = row["methods"].get("mtt")
        row["headroom"] = experts_overall["mean"] - mtt["accuracy"]["mean"] if experts_overall and mtt else None
    return {"study": study.id, "budget": spec.budget, "seeds": spec.seeds, "cells": cells,
            "experts": experts, "experts_overall": experts_overall,
            "runs_done": sum(1 for rid, *_ in spec.plan() if (study.run(rid) and study.run(rid).eval())),
            "runs_total": len(spec.plan())}


def _pct(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if not stat:
        return "–"
    sign = "+" if signed else ""
    if stat["n"] == 1:  # no spread to show: one seed is a demonstration
        return f"{100 * stat['mean']:{sign}.2f} (n=1)"
    return f"{100 * stat['mean']:{sign}.2f} ± {100 * stat['std']:.2f} (n={stat['n']})"


def _points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table (test accuracy %, mean ± std over seeds)."""
    lines = [f"Study `{summary['study']}`: budget convention **{summary['budget']}**, seeds {summary['seeds']}, "
             f"{summary['runs_done']}/{summary['runs_total']} runs done.", "",
             "| IPC | subsets | static MTT | SeqMatch | random real | SeqMatch − MTT (paired) | coupling MTT / SeqMatch "
             "| headroom |", "|---|---|---|---|---|---|---|---|"]
    for row in summary["cells"]:
        mtt, seq = row["methods"].get("mtt"), row["methods"].get("seqmatch")
        coupling = " / ".join(f"{m['coupling']['mean']:.3f}" if m and m.get("coupling") else "–" for m in (mtt, seq))
        lines.append(f"| {row['ipc']} | {row['subsets']} | {_pct(mtt and mtt['accuracy'])} | "
                     f"{_pct(seq and seq['accuracy'])} | {_pct(row['random_real'])} | {_pct(row['paired'], True)} | "
                     f"{coupling} | {_points(row.get('headroom'))} |")
    if any(row["controls"] for row in summary["cells"]):
        lines += ["", "Evaluation-only controls of the SeqMatch sets (test accuracy %):", "",
                  "| IPC | S1 alone | all subsets in one stage | S1..S(K-1) + random real last | SeqMatch |",
                  "|---|---|---|---|---|"]
        for row in summary["cells"]:
            c, seq = row["controls"], row["methods"].get("seqmatch")
            lines.append(f"| {row['ipc']} | {_pct(c.get('first_subset_alone'))} | {_pct(c.get('one_stage'))} | "
                         f"{_pct(c.get('random_last'))} | {_pct(seq and seq['accuracy'])} |")
    if summary.get("experts_overall"):
        lines += ["", f"Stage-1 experts' final test accuracy: {_pct(summary['experts_overall'])} over "
                      f"{len(summary['experts'])} seed(s). Headroom: the experts' mean minus static MTT's, in points "
                      f"(SeqMatch can only add what the experts know and static MTT misses)."]
    lines += ["", "Accuracy: mean ± sample std over seeds; a cell with fewer than 3 paired seeds is a demonstration, "
                  "not evidence."]
    return "\n".join(lines) + "\n"


# -- running a study -------------------------------------------------------------------------------------
RunHook = Callable[[str, int, int], None]  # (run id, index, total) before each run


def run_study(study: StudyFolder, experts_root: Path, observer=None, control=None,
              on_run: RunHook | None = None, executor=None) -> dict[str, Any]:
    """Run (or resume) every run of the study in plan order, then return the summary. Finished runs are
    skipped, an interrupted one resumes from its checkpoint; the summary is rewritten after each run.
    Jobs (experts, evaluation nets) run on `executor` (default: local)."""
    from .context import RunContext
    from .control import RunControl, StopRequested
    from .seqmatch import Distiller

    spec, control = study.spec(), control or RunControl()
    plan = spec.plan()
    study.update_status(state=RunState.RUNNING, started=time.time(), total=len(plan))
    try:
        for index, (rid, cell, seed, method) in enumerate(plan):
            config = spec.run_config(cell, seed, method)
            run = study.run(rid) or RunFolder.create(study.runs_root, config, rid)
            if run.config() != config:
                raise ConfigError(f"{run.path} holds another config than the study's plan; delete that run folder")
            study.update_status(current=rid, index=index)
            if on_run:
                on_run(rid, index, len(plan))
            if run.status().get("state") != RunState.DONE:
                if Distiller(run, experts_root, observer, control, executor=executor).run() is None:
                    raise StopRequested()
            ctx = RunContext(config, experts_root, executor=executor)
            if str(seed) not in study.expert_accuracy():
                study.save_expert_accuracy(seed, expert_accuracy(ctx))
            if method == "seqmatch" and spec.controls and run.controls() is None:
                run.save_controls(evaluate_controls(ctx, run, control))
            summary = summarise(study)
            study.save_summary(summary, format_table(summary))
            study.update_status(done=summary["runs_done"])
    except StopRequested:
        study.update_status(state=RunState.STOPPED, current=None)
        raise
    except BaseException as error:
        study.update_status(state=RunState.FAILED if isinstance(error, Exception) else RunState.STOPPED, current=None,
                            error=f"{type(error).__name__}: {error}")
        raise
    summary = summarise(study)
    study.save_summary(summary, format_table(summary))
    study.update_status(state=RunState.DONE, current=None, finished=time.time(), done=summary["runs_done"])
    return summary


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
