"""Validated run configuration: one dataclass tree, strict parsing, presets.

Every setting of a run lives here. `RunConfig.from_dict` rejects unknown keys and
impossible values with a `ConfigError` that names the dotted field and the fix.
Static MTT is a SeqMatch run with a single subset (K = 1).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from seqmatch_engine.core.paths import PRESETS_DIR


class ConfigError(ValueError):
    """A configuration value is missing, unknown or impossible."""


# The datasets data/datasets.py reads (named here so that a config is checked without loading a reader).
DATASET_NAMES: tuple[str, ...] = (
    "fashion-mnist-small",
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "tiny-imagenet",
)


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist-small"  # a name from DATASET_NAMES
    root: str | None = None               # data root; None: $SEQMATCH_DATA_ROOT or ~/.cache/seqmatch/data
    download: bool = False                # fetch through torchvision when missing (needs internet)
    zca: bool = False                     # ZCA whitening (eps 0.1) fitted on the training split
    train_per_class: int | None = None    # cap on real training images per class (CPU presets)
    val_per_class: int = 50               # validation images per class carved from the training data


@dataclass
class ModelConfig:
    width: int = 128           # channels of every conv block
    depth: int | None = None   # conv blocks; None: 3 for images up to 32 px, 4 for 64 px


@dataclass
class ExpertConfig:
    num_experts: int = 10      # trajectories per stage
    epochs: int = 50           # real-data epochs of stage-1 experts (epoch 0 is saved too)
    stage_epochs: int = 20     # real-data epochs of retrained stage-k experts (k >= 2)
    lr: float = 0.01           # plain SGD, no momentum (lr_teacher)
    batch_size: int = 256
    augment: bool = True       # DSA on real batches


@dataclass
class SubsetConfig:
    ipc: int                   # images per class of this subset
    interval: tuple[int, int]  # start epochs t are drawn from [a, b - expert_epochs)
    iterations: int = 500      # outer iterations spent on this subset
    lr_init: float = 0.01      # initial learned student lr (alpha_k)


@dataclass
class DATMConfig:
    """DATM's settings (distill.objective "datm"; methods/datm.py)."""

    lr_label: float = 2.0              # SGD lr of the soft label logits ...
    label_momentum: float = 0.9        # ... and its momentum
    initial_end: int | None = None     # the start-epoch window's end at iteration 0; it rises linearly to each
    growth_iterations: int = 0         # subset's interval end over this many iterations (None / 0: fixed window)
    update_below: float | None = 1.0   # the optimisers step only when the matching loss is under this (None: always)


@dataclass
class DistillConfig:
    subsets: list[SubsetConfig] = field(default_factory=lambda: [SubsetConfig(10, (0, 20))])
    expert_source: str = "retrained"  # "retrained" (authors' code) or "window" of the stage-1 experts
    objective: str = "mtt"            # what each subset learns and matches: "mtt" or "datm" (methods/)
    datm: DATMConfig = field(default_factory=DATMConfig)  # used when objective is "datm"
    syn_steps: int = 20               # N: differentiable student steps per outer iteration
    expert_epochs: int = 2            # M: target is M expert epochs after the start
    batch_syn: int | None = None      # student minibatch; None: classes * ipc_k
    lr_img: float = 1000.0            # SGD lr on pixels
    lr_lr: float = 1e-5               # SGD lr on the learned student lr
    momentum: float = 0.5             # momentum of both optimisers
    init: str = "real"                # "real" images of the class or "noise"
    max_lr: float = 1.0               # a learned lr above this counts as exploding
    select_every: int = 100           # validation evaluation interval (keeps the best S_k); 0: off
    # or: validation evaluations per subset at evenly spaced iterations, the last at the subset's final one,
    # so a 1,000-iteration subset selects as often as a 100-iteration one (0: off; set one of the two)
    select_points: int = 0
    snapshot_every: int = 10          # resumable checkpoint + timeline snapshot interval
    publish_every: int = 1            # images sent to observers every this many iterations
    diagnose_every: int = 0           # G1 gradient-similarity record every this many iterations; 0: off
    nominal_groups: int = 2           # G1 of static MTT: its one subset split into this many groups per class
    # "unrolled" (keep all N steps' graphs), "recompute" (rebuild each step's graph in the backward pass:
    # ~1/6 of unrolled's memory with the convolutions replayed, ~1/N with nothing recorded where even that
    # does not fit; matching.py), or "auto": unrolled if it fits, else recompute
    memory_mode: str = "auto"


@dataclass
class EvalConfig:
    epochs: int = 1000           # epochs per curriculum stage (lr x0.1 at the midpoint)
    num_nets: int = 5            # nets for the final test accuracy (mean +- std)
    select_nets: int = 1         # nets per validation evaluation during distillation
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    architectures: list[str] = field(default_factory=lambda: ["convnet"])
    baseline: bool = True        # also evaluate a random real subset of the same IPC
    baseline_lr: float = 0.01    # lr of the random-real baseline (the DC/DSA/MTT protocol)


@dataclass
class RunConfig:
    name: str = ""
    seed: int = 0
    # The budget convention a static MTT run was derived under from a SeqMatch config (as_static):
    # "per-image" (the authors') or "total"; null for a run not made as a counterpart.
    budget: str | None = None
    device: str = "auto"         # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "fp32"      # of the unroll, experts and evaluation; bf16 is measured, not offered (README)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def ipc(self) -> int:
        """Total images per class over all subsets."""
        return sum(s.ipc for s in self.distill.subsets)

    @property
    def schedule(self) -> str:
        """"static" (one subset, all images learned at once) or "sequential" (SeqMatch's K subsets in turn)."""
        return "static" if len(self.distill.subsets) == 1 else "sequential"

    @property
    def method(self) -> str:
        """The objective under the schedule, as compared in studies: mtt, seqmatch (= SeqMatch-MTT), datm or
        seqmatch-datm."""
        return method_name(self.distill.objective, self.schedule)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        config = build_dataclass(cls, raw, "")
        validate(config)
        return config


ARCHITECTURES = ("convnet", "resnet18", "vgg11", "alexnet")


@dataclass(frozen=True)
class Objective:
    """An objective as configs, studies and views name it; methods.OBJECTIVES holds the class that runs it. Its
    settings, where it has any, are the field of DistillConfig named after it (as `datm`)."""

    name: str          # distill.objective
    label: str         # how people read it: "MTT", "DATM"
    soft_labels: bool  # whether it learns soft labels (its Compare and Studies views lead with the fair scores)


# The objectives a config accepts, in the order the views show them. Adding one: a module in methods/, its class in
# methods.OBJECTIVES and one line here (tests/test_soft_labels.py checks that the two agree).
OBJECTIVE_CATALOGUE = {o.name: o for o in (Objective("mtt", "MTT", False), Objective("datm", "DATM", True))}
OBJECTIVES = tuple(OBJECTIVE_CATALOGUE)
SCHEDULES = ("static", "sequential")


def method_name(objective: str, schedule: str) -> str:
    """mtt/datm for the static schedule; seqmatch (SeqMatch-MTT) or seqmatch-datm for the sequential one."""
    if schedule == "static":
        return objective
    return "seqmatch" if objective == "mtt" else f"seqmatch-{objective}"


METHODS = tuple(method_name(o, s) for o in OBJECTIVES for s in SCHEDULES)  # objective x schedule, as studies name them


def method_parts(method: str) -> tuple[str, str]:
    """(objective, schedule) of a method name (inverse of method_name)."""
    if method not in METHODS:
        raise ConfigError(f"method {method!r}: choose from {', '.join(METHODS)}")
    if method == "seqmatch":
        return "mtt", "sequential"
    return (method.removeprefix("seqmatch-"), "sequential") if method.startswith("seqmatch-") else (method, "static")


def method_label(method: str) -> str:
    """How people read a method: static MTT, SeqMatch, DATM, SeqMatch-DATM (SeqMatch alone is SeqMatch-MTT)."""
    objective, schedule = method_parts(method)
    label = OBJECTIVE_CATALOGUE[objective].label
    if schedule == "sequential":
        return "SeqMatch" if objective == "mtt" else f"SeqMatch-{label}"
    return "static MTT" if objective == "mtt" else label


def sequential_counterparts() -> dict[str, str]:
    """Each static method's sequential one, by objective: {"mtt": "seqmatch", "datm": "seqmatch-datm"}."""
    return {o: method_name(o, "sequential") for o in OBJECTIVES}


def without_other_settings(distill: dict[str, Any], objective: str) -> dict[str, Any]:
    """A raw distill section without the settings of objectives other than `objective` (a DATM preset run as MTT
    takes MTT's defaults, and the reverse)."""
    return {k: v for k, v in distill.items() if k == objective or k not in OBJECTIVE_CATALOGUE}
MAX_NETS = 100  # nets per evaluation: each trains eval.epochs per stage; 100 already take 20 times the default 5
EXPERT_SOURCES = ("retrained", "window")
INITS = ("real", "noise")
MEMORY_MODES = ("auto", "unrolled", "recompute")
BUDGETS = ("per-image", "total")  # static MTT's iterations against SeqMatch's: see static_iterations
BUDGET_NOTES = {
    "per-image": "authors' convention: static MTT runs as many iterations as each SeqMatch subset, so every "
                 "image gets the same number of updates and the unroll compute is about equal",
    "total": "static MTT runs the sum of the subsets' iterations: K times the updates per image and about "
             "K times the compute of SeqMatch",
}


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """get_type_hints of a config dataclass, resolved once (it evaluates every annotation's string each call)."""
    return get_type_hints(cls)


def build_dataclass(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected an object, got {type(raw).__name__}")
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(raw) - names))
    if unknown:
        named = ", ".join(f"{where + '.' if where else ''}{key}" for key in unknown)
        raise ConfigError(f"{named}: unknown setting{'s' if len(unknown) > 1 else ''}; "
                          f"known settings here: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            values[f.name] = _coerce(hints[f.name], raw[f.name], f"{where}.{f.name}" if where else f.name)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing required setting{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)}")
    return cls(**values)


def _shown(value: Any) -> str:
    """A value as it is written in JSON (true, "2", 2.7), the way specs, configs and --set give it."""
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build_dataclass(hint, value, where)
    if args and type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {_shown(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_shown(value)}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a pair [start, end], got {_shown(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {_shown(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_shown(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {_shown(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {_shown(value)}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


def validate(config: RunConfig) -> None:
    """Reject impossible values; each message names the field and how to fix it."""
    d, m, e, s, v = config.data, config.model, config.experts, config.distill, config.eval
    _require(config.budget is None or config.budget in BUDGETS, "budget",
             f"must be one of {', '.join(BUDGETS)}, or null for a run not derived as a static counterpart")
    _require(config.precision == "fp32", "precision",
             f"{config.precision!r} is not offered: fp32 is the only precision. bf16 was measured on this project's "
             f"CPUs: without native bf16 (AVX2) its convolutions ran 4-20x slower than fp32; with AVX-512 BF16 the "
             f"unroll in bf16 convolutions was still 1.2-1.35x slower than the fused fp32 path, experts and "
             f"evaluation nets gained 2-4 %, and one outer step's pixel gradient agreed less with fp64 (cosine "
             f"0.9983 against 0.99993) (python -m seqmatch_engine bench --only precision measures your machine)")
    _require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", config.device) is not None, "device",
             f"unknown device {config.device!r}; use auto, cpu, cuda or cuda:N")
    _require(d.dataset in DATASET_NAMES, "data.dataset",
             f"unknown dataset {d.dataset!r}; choose one of {', '.join(DATASET_NAMES)}")
    _require(d.train_per_class is None or d.train_per_class >= max(config.ipc, 1), "data.train_per_class",
             f"must be at least the total IPC ({config.ipc}): subsets start from, and the baseline draws, "
             f"that many real images per class; or null for all")
    _require(d.val_per_class >= 0, "data.val_per_class", "must be >= 0")
    _require(m.width >= 1, "model.width", "must be >= 1")
    _require(m.depth is None or 1 <= m.depth <= 6, "model.depth", "must be between 1 and 6, or null for automatic")
    _require(e.num_experts >= 1, "experts.num_experts", "must be >= 1")
    _require(e.epochs >= 1, "experts.epochs", "must be >= 1")
    _require(e.stage_epochs >= 1, "experts.stage_epochs", "must be >= 1")
    _require(e.lr > 0, "experts.lr", "must be > 0")
    _require(e.batch_size >= 1, "experts.batch_size", "must be >= 1")
    _require(len(s.subsets) >= 1, "distill.subsets", "needs at least one subset")
    _require(s.expert_source in EXPERT_SOURCES, "distill.expert_source",
             f"must be one of {', '.join(EXPERT_SOURCES)}")
    _require(s.init in INITS, "distill.init", f"must be one of {', '.join(INITS)}")
    _require(s.objective in OBJECTIVES, "distill.objective",
             f"unknown objective {s.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    validate_datm(config)
    _require(s.syn_steps >= 1, "distill.syn_steps", "must be >= 1")
    _require(s.expert_epochs >= 1, "distill.expert_epochs", "must be >= 1")
    _require(s.batch_syn is None or s.batch_syn >= 1, "distill.batch_syn", "must be >= 1 or null")
    _require(s.lr_img > 0, "distill.lr_img", "must be > 0")
    _require(s.lr_lr >= 0, "distill.lr_lr", "must be >= 0")
    _require(0 <= s.momentum < 1, "distill.momentum", "must be in [0, 1)")
    _require(s.max_lr > 0, "distill.max_lr", "must be > 0")
    _require(s.select_every >= 0, "distill.select_every", "must be >= 0 (0 turns selection off)")
    _require(s.select_points >= 0, "distill.select_points",
             "must be >= 0 (0: select every distill.select_every iterations instead)")
    _require(not (s.select_points and s.select_every), "distill.select_points",
             f"{s.select_points} and distill.select_every {s.select_every} both place the selection points; set one "
             f"of them to 0")
    _require(s.snapshot_every >= 1, "distill.snapshot_every", "must be >= 1")
    _require(s.publish_every >= 1, "distill.publish_every", "must be >= 1")
    _require(s.diagnose_every >= 0, "distill.diagnose_every", "must be >= 0 (0 turns G1 recording off)")
    _require(s.nominal_groups >= 1, "distill.nominal_groups", "must be >= 1")
    _require(s.memory_mode in MEMORY_MODES, "distill.memory_mode",
             f"must be one of {', '.join(MEMORY_MODES)} (auto: unrolled when it fits in memory)")
    for k, sub in enumerate(s.subsets):
        where = f"distill.subsets[{k}]"
        _require(sub.ipc >= 1, f"{where}.ipc", "must be >= 1 image per class")
        _require(sub.iterations >= 0, f"{where}.iterations", "must be >= 0")
        _require(sub.lr_init > 0, f"{where}.lr_init", "must be > 0")
        a, b = sub.interval
        horizon = expert_horizon(config, k)
        _require(0 <= a and b - s.expert_epochs > a, f"{where}.interval",
                 f"[{a}, {b}) leaves no start epoch: need 0 <= start and start + expert_epochs "
                 f"({s.expert_epochs}) < end")
        epochs_field = "experts.epochs" if k == 0 or s.expert_source == "window" else "experts.stage_epochs"
        _require(b <= horizon + 1, f"{where}.interval",
                 f"ends at epoch {b} but its experts have only {horizon} epochs; lower the end or raise {epochs_field}")
    _require(v.epochs >= 1, "eval.epochs", "must be >= 1")
    _require(1 <= v.num_nets <= MAX_NETS, "eval.num_nets", f"must be from 1 to {MAX_NETS}, got {v.num_nets}")
    _require(1 <= v.select_nets <= MAX_NETS, "eval.select_nets", f"must be from 1 to {MAX_NETS}, got {v.select_nets}")
    _require(v.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _require(v.baseline_lr > 0, "eval.baseline_lr", "must be > 0")
    _require(len(v.architectures) >= 1, "eval.architectures", "needs at least one architecture")
    for arch in v.architectures:
        _require(arch in ARCHITECTURES, "eval.architectures", f"unknown {arch!r}; choose from {', '.join(ARCHITECTURES)}")


def validate_datm(config: RunConfig) -> None:
    s = config.distill
    d = s.datm
    if s.objective != "datm":
        _require(d == DATMConfig(), "distill.datm", "is set but distill.objective is not \"datm\": set "
                                                  "distill.objective to datm, or remove distill.datm")
        return
    _require(s.init == "real", "distill.init", "DATM starts from real images the experts classify correctly: use real")
    _require(d.lr_label > 0, "distill.datm.lr_label", "must be > 0")
    _require(0 <= d.label_momentum < 1, "distill.datm.label_momentum", "must be in [0, 1)")
    _require(d.growth_iterations >= 0, "distill.datm.growth_iterations", "must be >= 0 (0: a fixed window)")
    _require(d.update_below is None or d.update_below > 0, "distill.datm.update_below", "must be > 0, or null")
    for k, sub in enumerate(s.subsets):
        a, b = sub.interval
        _require(d.initial_end is None or a + s.expert_epochs < d.initial_end <= b, "distill.datm.initial_end",
                 f"{d.initial_end} must lie in ({a + s.expert_epochs}, {b}] for distill.subsets[{k}].interval "
                 f"[{a}, {b}): the window grows from it to the interval's end")


def expert_horizon(config: RunConfig, stage: int) -> int:
    """Number of real-data epochs in the trajectories that stage `stage` (0-based) matches."""
    if stage == 0 or config.distill.expert_source == "window":
        return config.experts.epochs
    return config.experts.stage_epochs


def selects(dist: DistillConfig) -> bool:
    """Whether stages keep their best candidate by validation accuracy (else their last images)."""
    return dist.select_points > 0 or dist.select_every > 0


def selection_iterations(iterations: int, select_every: int, select_points: int) -> list[int]:
    """The iterations after which a subset of `iterations` outer iterations is scored on validation data.

    select_points P > 0: P evenly spaced points, the j-th at ceil(j * iterations / P), so the last is the final
    iteration (fewer when iterations < P); select_every > 0: every `select_every` iterations and the final one;
    [] when both are 0 (selection off). A config sets at most one of them (validate).
    1000, 0, 4 -> [250, 500, 750, 1000]; 100, 30, 0 -> [30, 60, 90, 100].
    """
    if select_points > 0:
        return sorted({-(-j * iterations // select_points) for j in range(1, select_points + 1)} - {0})
    if select_every > 0:
        return sorted(set(range(select_every, iterations + 1, select_every)) | ({iterations} - {0}))
    return []


def split_ipc(ipc: int, num_subsets: int) -> list[int]:
    """Split IPC into `num_subsets` near-equal parts, larger first: 50, 3 -> [17, 17, 16]."""
    if num_subsets < 1:
        raise ConfigError("number of subsets: must be >= 1")
    if ipc < 1:
        raise ConfigError(f"IPC: must be >= 1 image per class, got {ipc}")
    if ipc < num_subsets:
        raise ConfigError(f"IPC {ipc} cannot be split into {num_subsets} subsets: each subset needs at least "
                          f"one image per class; use at most {ipc} subsets or raise IPC to {num_subsets}")
    base, extra = divmod(ipc, num_subsets)
    return [base + (1 if k < extra else 0) for k in range(num_subsets)]


def static_iterations(subsets: list[SubsetConfig], budget: str) -> int:
    """Outer iterations of static MTT's one subset against SeqMatch's `subsets` under a budget convention.

    per-image (the authors'): every image gets as many updates as a SeqMatch image does on average,
        sum_k ipc_k * I_k / IPC, which is I when every subset runs I iterations (each SeqMatch subset
        is its own run as long as MTT's whole run; the unroll compute is about equal too, since
        SeqMatch's minibatches hold C * ipc_k images);
    total: the sum of the subsets' iterations (MTT gets K times the updates per image and about
        K times the compute).
    """
    if budget not in BUDGETS:
        raise ConfigError(f"budget: unknown convention {budget!r}; use one of {', '.join(BUDGETS)}")
    if budget == "total":
        return sum(s.iterations for s in subsets)
    ipc = sum(s.ipc for s in subsets)
    return round(sum(s.ipc * s.iterations for s in subsets) / ipc)


def as_static(config: RunConfig, budget: str = "per-image") -> RunConfig:
    """The static MTT counterpart of a run under a budget convention (see static_iterations): one subset
    with the same total IPC, stage-1 interval and initial lr, and G1's nominal groups set to the number
    of SeqMatch subsets so both are drawn on the same axes."""
    first = config.distill.subsets[0]
    iterations = static_iterations(config.distill.subsets, budget)
    static = dataclasses.replace(config.distill, nominal_groups=len(config.distill.subsets), subsets=[
        SubsetConfig(ipc=config.ipc, interval=first.interval, iterations=iterations, lr_init=first.lr_init)])
    method = method_name(config.distill.objective, "static")
    name = f"{config.name}-{method}" if config.name else method
    return dataclasses.replace(config, name=name, distill=static, budget=budget)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides (value parsed as JSON, else kept as text) to a raw dict."""
    values = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. distill.syn_steps=20")
        key, text = item.split("=", 1)
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return apply_values(raw, values)


def apply_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw dict with typed values set at dotted keys ({"distill.syn_steps": 20}), later keys winning."""
    raw = json.loads(json.dumps(raw))
    for key, value in values.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a group of settings")
        node[parts[-1]] = value
    return raw


DEFAULT_PRESET = "cpu-demo"  # what the app's forms and the CLI start from


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> dict[str, Any]:
    """The raw dict of a preset in assets/presets/ (validate with RunConfig.from_dict)."""
    if name not in preset_names():  # also refuses names that would leave the presets folder
        raise ConfigError(f"preset {str(name)[:80]!r} not found in {PRESETS_DIR}; available: {', '.join(preset_names())}")
    return json.loads((PRESETS_DIR / f"{name}.json").read_text())


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The raw dict of a JSON config file, with a clear message when it is not one."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path.resolve()} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path.resolve()} is not valid JSON: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {path.resolve()} cannot be read ({error.strerror}): "
                          f"pass the path of a JSON file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path.resolve()}: expected a JSON object at the top level")
    return raw
