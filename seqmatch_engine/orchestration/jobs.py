"""Jobs that can travel: the heavy, independent pieces of a run as small picklable specs + pure functions.

    ExpertJob  -> train_expert(job, on_epoch)    a trajectory (E+1, P): expert i of a recipe, from random init
                                                 or (SeqMatch stage k) after the curriculum U_1..U_{k-1}
    EvalJob    -> train_and_test(job, on_epoch)  the accuracy of evaluation net i trained on a curriculum
               -> train_partway(job, on_epoch)   net i after the curriculum's first stages (a NetState), from
                                                 which later jobs with the same seed tags go on (`start`)

A job carries everything that determines its result by value (the curriculum's tensors and lrs, the
net's shape, the settings, the seed tags), except the real data, which it names (DataRef) and a
worker prepares once per process. Its random draws come from generators seeded by (run seed,
purpose, index), never from the worker or the order of completion, so a job gives the same bits
wherever it runs. Jobs return their result; the driver alone writes files.
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from seqmatch_engine.core.config import DataConfig, EvalConfig
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.data.prepare import PreparedData, prepare_data
from seqmatch_engine.maths.evaluate import CurriculumStage, accuracy, train_curriculum
from seqmatch_engine.maths.experts import train_trajectory
from seqmatch_engine.maths.models import ConvNet, ConvNetSpec, build_eval_net, init_convnet_params

EpochFn = Callable[[int], None]  # called after each epoch (of an expert, or of an evaluation net's curriculum)


@dataclass(frozen=True)
class DataRef:
    """Names a prepared dataset: the data settings (as JSON) and the seed of the train/validation split."""

    data_json: str
    seed: int

    @classmethod
    def of(cls, config: DataConfig, seed: int) -> "DataRef":
        return cls(json.dumps(asdict(config), sort_keys=True), seed)

    def config(self) -> DataConfig:
        return DataConfig(**json.loads(self.data_json))


_prepared: dict[tuple[DataRef, str], PreparedData] = {}
_prepared_lock = threading.Lock()


def remember_data(ref: DataRef, device: torch.device, data: PreparedData) -> None:
    """Make `data` the prepared data of `ref` in this process (the driver's own, so local jobs reuse it)."""
    with _prepared_lock:
        _prepared[(ref, str(device))] = data


def prepared(ref: DataRef, device: torch.device) -> PreparedData:
    """The prepared data `ref` names, on `device`: prepared once per process (a worker's first job pays it)."""
    key = (ref, str(device))
    with _prepared_lock:
        if key not in _prepared:
            _prepared[key] = prepare_data(ref.config(), ref.seed, device)
        return _prepared[key]


@dataclass(frozen=True)
class ExpertJob:
    """Train expert `index` of a recipe on real data (plain SGD), saving every epoch.

    With `warm_start` (SeqMatch's stage-k experts) the fresh net is first trained through that
    curriculum with the evaluation settings `eval_config`, then on real data.
    """

    data: DataRef
    spec: ConvNetSpec
    epochs: int
    lr: float
    batch_size: int
    augment: bool
    seed: int
    tags: tuple          # generator tags: ("expert", warm-start name, index) for a run's experts
    device: str
    warm_start: tuple[CurriculumStage, ...] = ()
    eval_config: EvalConfig | None = None


def train_expert(job: ExpertJob, on_epoch: EpochFn | None = None) -> torch.Tensor:
    """The trajectory (epochs + 1, P) of `job`, on the CPU."""
    device = torch.device(job.device)
    data = prepared(job.data, device)
    generator = make_generator(job.seed, *job.tags)
    if job.warm_start:
        net = ConvNet(job.spec, init_convnet_params(job.spec, generator)).to(device)
        stages = [CurriculumStage(s.images.to(device), s.labels.to(device), s.lr) for s in job.warm_start]
        train_curriculum(net, stages, job.eval_config, generator)
        start = net.flat.detach()
    else:
        start = init_convnet_params(job.spec, generator, device)
    return train_trajectory(job.spec, data.train_images, data.train_labels, start, job.epochs, job.lr,
                            job.batch_size, job.augment, generator, on_epoch)


@dataclass(frozen=True)
class NetState:
    """An evaluation net part-way through a curriculum: everything one stage hands the next (each stage
    starts a fresh optimiser), so going on from it gives the bits of training straight through."""

    tensors: dict[str, torch.Tensor]   # the net's state_dict, on the CPU
    generator_state: torch.Tensor      # its generator's state (minibatches and augmentations still to draw)


@dataclass(frozen=True)
class EvalJob:
    """Train evaluation net `index` (architecture `arch`) through `stages`, then measure it on `split`.

    With `start` (a NetState of a job with the same seed, tag, arch and index, trained through earlier
    stages) the net goes on from there instead of from its initialisation."""

    data: DataRef
    spec: ConvNetSpec
    eval_config: EvalConfig
    arch: str
    stages: tuple[CurriculumStage, ...]
    seed: int
    tag: str             # what is evaluated ("synthetic", "random_real", "select-0", ...): part of the seed
    index: int
    split: str           # "test" or "val"
    device: str
    start: NetState | None = None


def eval_net_generator(seed: int, tag: str, arch: str, index: int) -> torch.Generator:
    """The generator of evaluation net `index` of `tag` (its initialisation, minibatches and augmentations): the one
    place its seed tags are written, so that diagnostics retrain exactly the nets an evaluation trained."""
    return make_generator(seed, "eval", tag, arch, index)


def _trained_net(job: EvalJob, on_epoch: EpochFn | None) -> tuple[torch.nn.Module, torch.Generator]:
    device = torch.device(job.device)
    generator = eval_net_generator(job.seed, job.tag, job.arch, job.index)
    net = build_eval_net(job.arch, job.spec, generator, device)
    if job.start is not None:
        net.load_state_dict(job.start.tensors)
        generator.set_state(job.start.generator_state)
    stages = [CurriculumStage(s.images.to(device), s.labels.to(device), s.lr) for s in job.stages]
    train_curriculum(net, stages, job.eval_config, generator, on_epoch)
    return net, generator


def train_and_test(job: EvalJob, on_epoch: EpochFn | None = None) -> float:
    """Top-1 accuracy of the trained net on the job's split."""
    data = prepared(job.data, torch.device(job.device))
    net, _ = _trained_net(job, on_epoch)
    images, labels = (data.test_images, data.test_labels) if job.split == "test" else (data.val_images, data.val_labels)
    return accuracy(net, images, labels)


def train_partway(job: EvalJob, on_epoch: EpochFn | None = None) -> NetState:
    """The net and generator after training through the job's stages (its split is not used)."""
    net, generator = _trained_net(job, on_epoch)
    return NetState({name: t.detach().cpu().clone() for name, t in net.state_dict().items()}, generator.get_state())


def epochs_of(job: ExpertJob | EvalJob) -> int:
    """How many on_epoch calls the job makes (for progress)."""
    if isinstance(job, ExpertJob):
        return job.epochs
    return job.eval_config.epochs * len(job.stages)
