"""The Distil form: preset values in, a validated RunConfig out (pure functions, no gradio)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from seqmatch_engine.core.config import (
    OBJECTIVE_CATALOGUE,
    ConfigError,
    RunConfig,
    apply_values,
    as_static,
    load_preset,
    method_parts,
    split_ipc,
    without_other_settings,
)

METHODS = ("SeqMatch", "Static MTT")  # the schedule: K subsets in turn, or all images at once
OBJECTIVES = {f"{o.label} (soft labels)" if o.soft_labels else o.label: o.name  # what each subset learns and matches
              for o in OBJECTIVE_CATALOGUE.values()}


@dataclass
class FormValues:
    """Every field of the Distil form, in the order the UI passes them."""

    preset: str
    method: str
    objective: str
    ipc: int
    num_subsets: int
    iterations: int
    intervals: str
    syn_steps: int
    lr_img: float
    lr_lr: float
    num_experts: int
    expert_epochs: int
    eval_epochs: int
    eval_nets: int
    seed: int

    @classmethod
    def fields(cls) -> list[str]:
        return list(cls.__dataclass_fields__)


def format_intervals(intervals: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}-{b}" for a, b in intervals)


def parse_intervals(text: str, count: int) -> list[tuple[int, int]]:
    """'0-8, 0-6' -> [(0, 8), (0, 6)]; the last interval repeats when fewer than `count` are given,
    extra ones are ignored (a static run uses the first)."""
    found = [(int(a), int(b)) for a, b in re.findall(r"(\d+)\s*-\s*(\d+)", text or "")]
    leftovers = re.sub(r"(\d+)\s*-\s*(\d+)", "", text or "").replace(",", "").strip()
    if not found or leftovers:
        raise ConfigError(f"start-epoch intervals: cannot read {text!r}; write one 'start-end' per subset, "
                          f"e.g. '0-8, 0-6'")
    return (found + [found[-1]] * count)[:count]


def form_defaults(preset: str) -> FormValues:
    """The form as a preset fills it."""
    config = RunConfig.from_dict(load_preset(preset))
    subsets = config.distill.subsets
    return FormValues(
        preset=preset, method=METHODS[0] if len(subsets) > 1 else METHODS[1],
        objective=next(label for label, name in OBJECTIVES.items() if name == config.distill.objective), ipc=config.ipc,
        num_subsets=len(subsets), iterations=subsets[0].iterations,
        intervals=format_intervals([s.interval for s in subsets]), syn_steps=config.distill.syn_steps,
        lr_img=config.distill.lr_img, lr_lr=config.distill.lr_lr, num_experts=config.experts.num_experts,
        expert_epochs=config.experts.epochs, eval_epochs=config.eval.epochs, eval_nets=config.eval.num_nets,
        seed=config.seed)


def _whole(value: float | int | None, name: str) -> int:
    if value is None or value == "":
        raise ConfigError(f"{name}: the field is empty; enter a whole number")
    if float(value) != int(value):
        raise ConfigError(f"{name}: expected a whole number, got {value!r}")
    return int(value)


def _number(value: float | int | None, name: str) -> float:
    if value is None or value == "":
        raise ConfigError(f"{name}: the field is empty; enter a number")
    return float(value)


def config_from_form(values: FormValues) -> RunConfig:
    """Validate the form against its preset; raises ConfigError naming the field to fix."""
    raw = load_preset(values.preset)
    if not values.intervals:
        raise ConfigError("start-epoch intervals: the field is empty; enter e.g. 0-8 (one per subset, or one for all)")
    ipc = _whole(values.ipc, "IPC")
    count = 1 if values.method == METHODS[1] else _whole(values.num_subsets, "number of subsets")
    sizes = split_ipc(ipc, count)
    intervals = parse_intervals(values.intervals, count)
    lr_init = raw.get("distill", {}).get("subsets", [{}])[0].get("lr_init", 0.01)
    subsets = [{"ipc": n, "interval": list(iv), "iterations": _whole(values.iterations, "iterations per subset"),
                "lr_init": lr_init} for n, iv in zip(sizes, intervals)]
    if values.objective not in OBJECTIVES:
        raise ConfigError(f"objective: {values.objective!r} is not one of {', '.join(OBJECTIVES)}")
    objective = OBJECTIVES[values.objective]
    raw["distill"] = without_other_settings(raw.get("distill", {}), objective)
    overrides = {
        "distill.objective": objective,
        "distill.subsets": subsets, "distill.syn_steps": _whole(values.syn_steps, "syn_steps"),
        "distill.lr_img": _number(values.lr_img, "pixel lr (lr_img)"),
        "distill.lr_lr": _number(values.lr_lr, "lr of the learned lr (lr_lr)"),
        "experts.num_experts": _whole(values.num_experts, "experts"),
        "experts.epochs": _whole(values.expert_epochs, "expert epochs"),
        "eval.epochs": _whole(values.eval_epochs, "evaluation epochs"),
        "eval.num_nets": _whole(values.eval_nets, "evaluation nets"), "seed": _whole(values.seed, "seed"),
    }
    return RunConfig.from_dict(apply_values(raw, overrides))


def compare_set(values: FormValues, budget: str = "per-image",
                methods: tuple[str, ...] = ("mtt", "seqmatch")) -> dict[str, RunConfig]:
    """Configs of `methods` (config.METHODS) at the same total IPC from one form: each objective's sequential run
    with the form's K subsets, its static counterpart's iterations by the budget convention."""
    if not methods:
        raise ConfigError("methods: tick at least one method to compare")
    configs = {}
    for method in methods:
        objective, schedule = method_parts(method)
        label = next(label for label, name in OBJECTIVES.items() if name == objective)
        sequential = config_from_form(FormValues(**{**values.__dict__, "method": METHODS[0], "objective": label}))
        if len(sequential.distill.subsets) < 2:
            raise ConfigError("number of subsets: a comparison needs the sequential schedule with at least 2 subsets")
        configs[method] = as_static(sequential, budget) if schedule == "static" else sequential
    return configs
