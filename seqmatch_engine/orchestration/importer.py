"""Import what the public MTT / SeqMatch code saves, without unpickling arbitrary objects.

- A distilled set: `images_best.pt` (n, C, H, W), `labels_best.pt` (n,), optional `best_lr.pt`
  (a scalar) become a finished one-subset run folder.
- An expert buffer: `replay_buffer_<i>.pt`, a list of trajectories, each a list of epochs, each a
  list of parameter tensors in ConvNet order, becomes trajectory files in the experts cache.
Every file is read with `torch.load(weights_only=True)`, which refuses anything but tensors and
plain containers; other content gets an ImportError-style message naming the file.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from seqmatch_engine.core.config import RunConfig, load_preset
from seqmatch_engine.core.labels import hard
from seqmatch_engine.core.seeding import resolve_device
from seqmatch_engine.data.datasets import DatasetError, display_facts
from seqmatch_engine.data.prepare import PixelTransform, prepare_data
from seqmatch_engine.maths.experts import tensor_digest
from seqmatch_engine.storage.expert_cache import ExpertCache
from seqmatch_engine.storage.files import StorageError, read_json, tensor_shape
from seqmatch_engine.storage.records import RunState
from seqmatch_engine.storage.runs import RunFolder, Subset

SET_FILES = ("images_best.pt", "labels_best.pt", "best_lr.pt")


class ImportFailed(ValueError):
    """A file is not something this importer understands; the message says what was expected."""


def load_public_file(path: Path) -> object:
    """torch.load with weights_only=True and readable errors (never loads code)."""
    name = Path(path).name
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error):
            raise ImportFailed(
                f"{name} holds Python objects other than tensors (a pickle that can run code when it is loaded), "
                f"so it was not loaded. The MTT/SeqMatch code saves tensors only: this file came from somewhere "
                f"else. Do not load it with safety checks off.") from None
        raise ImportFailed(f"{name} is damaged or not a PyTorch file; it was not loaded") from None
    except (RuntimeError, EOFError, ValueError, AttributeError, OSError):
        raise ImportFailed(f"{name} is damaged, truncated or not a PyTorch file; it was not loaded") from None


def _check_set(images: torch.Tensor, labels: torch.Tensor, lr: float) -> None:
    """Refuse a distilled set that cannot be evaluated; messages name the file and the field."""
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ImportFailed(f"images_best.pt: {bad} pixel values are NaN or infinite; the set is damaged "
                           f"(it was probably saved after its distillation diverged)")
    if labels.numel() == 0:
        raise ImportFailed("labels_best.pt holds no labels: a set needs at least one image per class")
    if int(labels.min()) < 0:
        raise ImportFailed(f"labels_best.pt: labels must be class indices 0, 1, ...; found {int(labels.min())}")
    if not (lr > 0 and lr == lr and lr != float("inf")):
        raise ImportFailed(f"best_lr.pt: the learned lr is {lr:g}; it must be a positive number (a set whose lr "
                           f"diverged cannot be trained on)")


def _tensor(value: object, name: str, ndim: int | tuple[int, ...]) -> torch.Tensor:
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(value, torch.Tensor) or value.dim() not in dims:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ImportFailed(f"{name}: expected a tensor with {' or '.join(map(str, dims))} dimensions, got {shape}")
    return value


def import_distilled_set(files: list[Path], dataset: str, zca: bool, runs_root: Path) -> RunFolder:
    """A finished one-subset run from images_best.pt / labels_best.pt [/ best_lr.pt]."""
    by_name = {Path(f).name: Path(f) for f in files}
    missing = [n for n in SET_FILES[:2] if n not in by_name]
    if missing:
        raise ImportFailed(f"a distilled set needs {' and '.join(SET_FILES[:2])}; missing {', '.join(missing)}")
    images = _tensor(load_public_file(by_name["images_best.pt"]), "images_best.pt", 4).float()
    labels = _tensor(load_public_file(by_name["labels_best.pt"]), "labels_best.pt", (1, 2))
    soft = labels.dim() == 2  # soft label logits (DATM's): kept, and the set is a DATM set
    if soft and not labels.shape[1]:
        raise ImportFailed("labels_best.pt holds soft labels over no classes: expected (n, classes) logits")
    labels = labels.float() if soft else labels.long()
    classes = hard(labels)
    lr = 0.01
    if "best_lr.pt" in by_name:
        lr_value = _tensor(load_public_file(by_name["best_lr.pt"]), "best_lr.pt", (0, 1))
        lr = float(lr_value.reshape(-1)[0])
    if len(labels) != len(images):
        raise ImportFailed(f"images_best.pt has {len(images)} images but labels_best.pt {len(labels)} labels")
    _check_set(images, classes, lr)
    num_classes = labels.shape[1] if soft else int(labels.max()) + 1
    counts = torch.bincount(classes, minlength=num_classes)
    if not bool((counts == counts[0]).all()):
        raise ImportFailed(f"labels are not class-balanced (counts {counts.tolist()}); expected IPC images per class")
    order = torch.argsort(classes, stable=True)
    raw = load_preset("cpu-demo")
    raw.update(name="imported", device="cpu")
    raw["data"] = {"dataset": dataset, "zca": zca}
    raw["model"] = {"width": 128, "depth": None}  # MTT's default ConvNet, for evaluating the set
    raw["distill"]["subsets"] = [{"ipc": int(counts[0]), "interval": [0, 3], "iterations": 0, "lr_init": lr}]
    raw["distill"]["objective"] = "datm" if soft else "mtt"
    raw["experts"]["epochs"] = max(raw["experts"]["epochs"], 3)
    config = RunConfig.from_dict(raw)
    transform, class_names, note = _display_transform(config, images, num_classes)
    run = RunFolder.create(runs_root, config)
    run.save_transform(transform)
    run.save_subset(0, Subset(images[order], labels[order], lr))
    run.update_status(state=RunState.DONE, phase="imported (not evaluated)", class_names=list(class_names),
                      dataset=dataset)
    if note:
        run.add_message("warning", note)
    return run


def _display_transform(config: RunConfig, images: torch.Tensor, num_classes: int):
    """(transform, class names, note): from the dataset when it is on disk (ZCA inverse included); else, offline,
    its normalisation constants alone, with a note saying what the pictures lack and how to evaluate."""
    dataset = config.data.dataset
    try:
        data = prepare_data(config.data, config.seed, resolve_device("cpu"))
    except DatasetError as error:
        mean, std, names = display_facts(dataset)
        if images.shape[1] != len(mean) or (names is not None and num_classes != len(names)):
            raise ImportFailed(f"the set's images have {images.shape[1]} channels and {num_classes} classes, but "
                               f"{dataset} has {len(mean)} and {len(names or [])}: pick the dataset it was distilled "
                               f"from") from None
        names = names or tuple(f"class {c}" for c in range(num_classes))
        lacking = ("; its ZCA whitening cannot be undone without the training data, so the pictures show "
                   "whitened images" if config.data.zca else "")
        note = (f"Shown without the {dataset} dataset, which is not on this machine{lacking}. To evaluate the set, "
                f"put the dataset where the message says and re-evaluate: {str(error).splitlines()[0][:300]}")
        return PixelTransform(torch.tensor(mean), torch.tensor(std)), names, note
    if tuple(images.shape[1:]) != (data.channels, *data.image_size) or num_classes != data.num_classes:
        raise ImportFailed(f"the set's images are {tuple(images.shape[1:])} with {num_classes} classes, but "
                           f"{dataset} has {(data.channels, *data.image_size)} with {data.num_classes}: "
                           f"pick the dataset it was distilled from")
    return data.transform, data.class_names, None


def import_expert_buffer(path: Path, experts_root: Path) -> tuple[Path, int, int, int]:
    """Store a replay_buffer_*.pt as trajectories (n, E+1, P); returns (folder, n, E+1, P)."""
    buffer = load_public_file(path)
    if not isinstance(buffer, list) or not buffer or not all(isinstance(t, list) and t for t in buffer):
        raise ImportFailed(f"{Path(path).name}: expected a list of trajectories (lists of epochs of parameter lists)")
    trajectories = []
    for i, trajectory in enumerate(buffer):
        epochs = []
        for e, params in enumerate(trajectory):
            if not isinstance(params, list) or not all(isinstance(p, torch.Tensor) for p in params):
                raise ImportFailed(f"{Path(path).name}: trajectory {i}, epoch {e} is not a list of tensors")
            epochs.append(torch.cat([p.reshape(-1).float() for p in params]))
        if len({len(v) for v in epochs}) != 1:
            raise ImportFailed(f"{Path(path).name}: trajectory {i} changes parameter count between epochs")
        trajectories.append(torch.stack(epochs))
    if len({tuple(t.shape) for t in trajectories}) != 1:
        raise ImportFailed(f"{Path(path).name}: trajectories differ in length or parameter count")
    stacked = torch.stack(trajectories)
    if not bool(torch.isfinite(stacked).all()):
        raise ImportFailed(f"{Path(path).name}: some parameters are NaN or infinite; the buffer is damaged")
    recipe = {"imported": Path(path).name, "digest": tensor_digest(stacked[:, 0])}
    cache = ExpertCache(experts_root)
    cache.missing(recipe, len(stacked), tuple(stacked.shape[1:]))  # records the recipe, refuses a clash
    for i, trajectory in enumerate(stacked):
        cache.save(recipe, i, trajectory)
    return cache.folder(recipe), *stacked.shape


def imported_buffers(experts_root: Path) -> list[dict]:
    """The expert buffers imported into the cache: name, folder, experts, epochs, parameters each."""
    found = []
    for recipe_file in sorted(Path(experts_root).glob("*/recipe.json")):
        try:
            recipe = read_json(recipe_file)
        except StorageError:
            continue
        if isinstance(recipe, dict) and "imported" in recipe:
            files = sorted(recipe_file.parent.glob("expert_*.safetensors"))
            shape = tensor_shape(files[0], "trajectory") if files else (0, 0)
            found.append({"name": recipe["imported"], "folder": recipe_file.parent, "experts": len(files),
                          "epochs": shape[0] - 1, "params": shape[1]})
    return found
