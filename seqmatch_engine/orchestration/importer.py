"""Import distilled sets and expert buffers, without unpickling arbitrary objects.

- A distilled set of the public code: `images_best.pt` (n, C, H, W), `labels_best.pt` (n,) or, DATM's, soft
  label logits (n, classes), optional `best_lr.pt` (MTT, SeqMatch) or `lr_best.pt` (DATM) (a scalar) become a
  finished one-subset run folder.
- A set this tool exported (`distilled_set.safetensors`, storage/export.py) becomes a finished run folder again:
  its subsets, labels (soft ones stay logits), learned lrs and config.
- An expert buffer: `replay_buffer_<i>.pt`, a list of trajectories, each a list of epochs, each a
  list of parameter tensors in ConvNet order, becomes trajectory files in the experts cache.
Every file is read with `torch.load(weights_only=True)`, which refuses anything but tensors and
plain containers; other content gets an ImportError-style message naming the file.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

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

SET_FILES = ("images_best.pt", "labels_best.pt")
LR_FILES = ("best_lr.pt", "lr_best.pt")  # MTT's and SeqMatch's name, DATM's name


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


def _check_set(images: torch.Tensor, labels: torch.Tensor, lr: float,
               names: tuple[str, str, str] = (*SET_FILES, LR_FILES[0])) -> None:
    """Refuse a distilled set that cannot be evaluated; messages name the file (or tensor) of `names` (images,
    labels, lr) and the field."""
    if len(labels) != len(images):
        raise ImportFailed(f"{names[0]} has {len(images)} images but {names[1]} {len(labels)} labels")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ImportFailed(f"{names[0]}: {bad} pixel values are NaN or infinite; the set is damaged "
                           f"(it was probably saved after its distillation diverged)")
    if labels.numel() == 0:
        raise ImportFailed(f"{names[1]} holds no labels: a set needs at least one image per class")
    if int(labels.min()) < 0:
        raise ImportFailed(f"{names[1]}: labels must be class indices 0, 1, ...; found {int(labels.min())}")
    if not (lr > 0 and lr == lr and lr != float("inf")):
        raise ImportFailed(f"{names[2]}: the learned lr is {lr:g}; it must be a positive number (a set whose lr "
                           f"diverged cannot be trained on)")


def _tensor(value: object, name: str, ndim: int | tuple[int, ...]) -> torch.Tensor:
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(value, torch.Tensor) or value.dim() not in dims:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ImportFailed(f"{name}: expected a tensor with {' or '.join(map(str, dims))} dimensions, got {shape}")
    return value


def import_set_files(files: list[Path], dataset: str, zca: bool, runs_root: Path) -> RunFolder:
    """A finished run from the files of a distilled set: this tool's export (its own dataset and ZCA setting come
    with it) or the public code's .pt files (of `dataset`, distilled with `zca` or not)."""
    exported = [Path(f) for f in files if Path(f).name.endswith(".safetensors")]
    if exported:
        if len(files) > 1:
            raise ImportFailed(f"{exported[0].name} is a whole exported set: import it alone")
        return import_exported_set(exported[0], runs_root)
    return import_distilled_set(files, dataset, zca, runs_root)


def import_distilled_set(files: list[Path], dataset: str, zca: bool, runs_root: Path) -> RunFolder:
    """A finished one-subset run from images_best.pt / labels_best.pt [/ best_lr.pt or lr_best.pt]."""
    by_name = {Path(f).name: Path(f) for f in files}
    missing = [n for n in SET_FILES if n not in by_name]
    if missing:
        raise ImportFailed(f"a distilled set needs {' and '.join(SET_FILES)}; missing {', '.join(missing)}")
    images = _tensor(load_public_file(by_name["images_best.pt"]), "images_best.pt", 4).float()
    labels = _tensor(load_public_file(by_name["labels_best.pt"]), "labels_best.pt", (1, 2))
    soft = labels.dim() == 2  # soft label logits (DATM's): kept, and the set is a DATM set
    if soft and not labels.shape[1]:
        raise ImportFailed("labels_best.pt holds soft labels over no classes: expected (n, classes) logits")
    labels = labels.float() if soft else labels.long()
    classes = hard(labels)
    lr_files = [n for n in LR_FILES if n in by_name]
    if len(lr_files) > 1:
        raise ImportFailed(f"both {' and '.join(lr_files)} given: a set has one learned lr; import the one that "
                           f"belongs to these images")
    lr, lr_name = 0.01, (lr_files or LR_FILES)[0]
    if lr_files:
        lr = float(_tensor(load_public_file(by_name[lr_name]), lr_name, (0, 1)).reshape(-1)[0])
    _check_set(images, classes, lr, (*SET_FILES, lr_name))
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
    return _finished_run(RunConfig.from_dict(raw), [Subset(images[order], labels[order], lr)], num_classes, runs_root)


def import_exported_set(path: Path, runs_root: Path) -> RunFolder:
    """A finished run from a set this tool exported: its subsets as they were (soft labels stay logits) under the
    run's config from the file's metadata, validated, with this machine's data root and no download (never the
    file's). A partial export becomes a run of the subsets it holds, which the run's messages say."""
    name = Path(path).name
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ImportFailed(f"{name} is damaged or not a safetensors file ({error}); it was not loaded") from None
    try:
        raw = RunConfig.from_dict(json.loads(metadata["config"])).to_dict()
        held = int(metadata["subsets"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ImportFailed(f"{name} lacks the run config that this tool's exports carry, so it was not exported by "
                           f"SeqMatch Studio; a set of the public MTT, SeqMatch or DATM code is imported from its "
                           f"images_best.pt and labels_best.pt") from None
    except ValueError as error:  # ConfigError: the config is not one this version accepts
        raise ImportFailed(f"{name}: the run config it carries is not valid here ({error})") from None
    planned = raw["distill"]["subsets"]
    if not 1 <= held <= len(planned):
        raise ImportFailed(f"{name} says it holds {held} subsets of a run of {len(planned)}; the file is damaged")
    subsets = []
    for k in range(held):
        keys = [f"S{k + 1}.{part}" for part in ("images", "labels", "lr")]
        missing = [key for key in keys if key not in tensors]
        if missing:
            raise ImportFailed(f"{name} lacks {', '.join(missing)}; the file is damaged")
        images = _tensor(tensors[keys[0]], f"{name}: {keys[0]}", 4).float()
        labels = _tensor(tensors[keys[1]], f"{name}: {keys[1]}", (1, 2))
        labels = labels.float() if labels.dim() == 2 else labels.long()
        lr = float(_tensor(tensors[keys[2]], f"{name}: {keys[2]}", (0, 1)).reshape(-1)[0])
        _check_set(images, hard(labels), lr, (f"{name}: {keys[0]}", f"{name}: {keys[1]}", f"{name}: {keys[2]}"))
        subsets.append(Subset(images, labels, lr))
    soft = subsets[0].labels.dim() == 2
    num_classes = subsets[0].labels.shape[1] if soft else max(int(s.labels.max()) for s in subsets) + 1
    for k, (subset, plan) in enumerate(zip(subsets, planned)):
        if len(subset.labels) != plan["ipc"] * num_classes:
            raise ImportFailed(f"{name}: S{k + 1} holds {len(subset.labels)} images, but its config says "
                               f"{plan['ipc']} per class of {num_classes}; the file is damaged")
    raw["data"].update(root=None, download=False)
    raw["distill"]["subsets"] = planned[:held]
    raw["name"] = f"imported-{raw['name']}"
    partial = (f"imported from a partial export: S1-S{held} of the run's {len(planned)} subsets (S{held + 1} onwards "
               f"had not been learned when it was exported)" if held < len(planned) else None)
    return _finished_run(RunConfig.from_dict(raw), subsets, num_classes, runs_root, partial)


def _finished_run(config: RunConfig, subsets: list[Subset], num_classes: int, runs_root: Path,
                  note: str | None = None) -> RunFolder:
    """A finished, not yet evaluated run folder holding `subsets` under `config`, shown through its dataset's
    transform (or, without the dataset on disk, its normalisation alone, which a message then says)."""
    transform, class_names, display_note = _display_transform(config, subsets[0].images, num_classes)
    run = RunFolder.create(runs_root, config)
    run.save_transform(transform)
    for k, subset in enumerate(subsets):
        run.save_subset(k, subset)
    run.update_status(state=RunState.DONE, phase="imported (not evaluated)", class_names=list(class_names),
                      dataset=config.data.dataset)
    for text in (note, display_note):
        if text:
            run.add_message("warning", text)
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
