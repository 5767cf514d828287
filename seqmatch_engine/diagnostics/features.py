"""G3: penultimate features of real and synthetic images across an expert's epochs, one joint 2-D map.

Points are a fixed seeded sample of real training images plus every synthetic image (tagged
by subset, and by source when several runs are overlaid). Each point is embedded once per
chosen epoch of one held-out stage-1 expert: the rows of the joint embedding are all
(epoch, point) pairs, epoch-major. Features are standardised per dimension over all rows
before reduction. Reducers: "pca" (exact SVD, deterministic, instant) and "umap"
(umap-learn, seeded, imported only when asked for).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.maths.evaluate import random_real_subset
from seqmatch_engine.maths.models import ConvNetSpec, convnet_features

REDUCERS = ("pca", "umap")


@dataclass
class PointSet:
    """Images (N, C, H, W) with labels (N,), a kind per point ("real", "S1", ...) and a source per point."""

    images: torch.Tensor
    labels: torch.Tensor
    kinds: list[str]
    sources: list[str]

    @staticmethod
    def concat(parts: list["PointSet"]) -> "PointSet":
        return PointSet(torch.cat([p.images.cpu() for p in parts]), torch.cat([p.labels.cpu() for p in parts]),
                        [k for p in parts for k in p.kinds], [s for p in parts for s in p.sources])


def real_sample(train_images: torch.Tensor, train_labels: torch.Tensor, num_classes: int, per_class: int,
                seed: int) -> PointSet:
    """`per_class` seeded real training images per class (the same for every run of one seed and data config)."""
    per_class = min(per_class, int(torch.bincount(train_labels.cpu(), minlength=num_classes).min()))
    images, labels = random_real_subset(train_images, train_labels, num_classes, per_class,
                                        make_generator(seed, "g3-real"))
    return PointSet(images.cpu(), labels.cpu(), ["real"] * len(labels), ["real"] * len(labels))


def subset_points(subsets: list[tuple[torch.Tensor, torch.Tensor]], source: str) -> PointSet:
    """All synthetic images of one run, kind S1, S2, ... by subset; subsets are (images, labels) pairs."""
    kinds = [f"S{k + 1}" for k, (_, labels) in enumerate(subsets) for _ in range(len(labels))]
    return PointSet(torch.cat([i.detach().cpu() for i, _ in subsets]), torch.cat([y.cpu() for _, y in subsets]),
                    kinds, [source] * len(kinds))


def checkpoint_epochs(horizon: int, count: int = 3) -> list[int]:
    """`count` evenly spread epochs of a trajectory with epochs 0..horizon: 12, 3 -> [0, 6, 12]."""
    if count <= 1:
        return [horizon]
    return sorted({round(i * horizon / (count - 1)) for i in range(count)})


@torch.no_grad()
def feature_table(trajectory: torch.Tensor, epochs: list[int], images: torch.Tensor, spec: ConvNetSpec,
                  batch_size: int = 512) -> torch.Tensor:
    """Features (len(epochs), N, feature_dim) of images (N, C, H, W) under trajectory[epoch] (E+1, P)."""
    device = images.device
    table = []
    for epoch in epochs:
        params = trajectory[epoch].to(device)
        table.append(torch.cat([convnet_features(params, images[i:i + batch_size], spec)
                                for i in range(0, len(images), batch_size)]).cpu())
    return torch.stack(table)


def standardise(rows: torch.Tensor) -> torch.Tensor:
    """Rows (R, D) centred and scaled to unit variance per dimension (constant dimensions left at 0)."""
    rows = rows.double()
    std = rows.std(0, unbiased=False)
    return (rows - rows.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))


def pca_2d(rows: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """First two principal coordinates (R, 2) by exact SVD; signs fixed so the largest loading is positive."""
    centred = rows.double() - rows.double().mean(0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    coords = centred @ (components * signs).T
    if coords.shape[1] < 2:  # a single feature dimension
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - coords.shape[1], dtype=coords.dtype)], 1)
    return coords.float()


def umap_2d(rows: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """2-D UMAP (R, 2) with a fixed random_state (umap-learn, imported here: numba compiles on first use)."""
    import umap  # deferred: numba compiles umap on import (~20 s); only G3 with the UMAP reducer needs it

    neighbours = max(2, min(15, len(rows) - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, min_dist=0.1, random_state=seed)
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)  # seeded: 1 job
            return torch.from_numpy(reducer.fit_transform(rows.double().numpy())).float()
    finally:
        torch.set_num_threads(threads)  # fitting resets torch's thread count (seen with umap-learn 0.5)


def reduce(rows: torch.Tensor, reducer: str, seed: int) -> torch.Tensor:
    """Rows (R, D) -> coordinates (R, 2) with the named reducer."""
    if reducer == "pca":
        return pca_2d(rows, seed)
    if reducer == "umap":
        return umap_2d(rows, seed)
    raise ValueError(f"unknown reducer {reducer!r}; choose one of {', '.join(REDUCERS)}")


@dataclass
class Embedding:
    """A joint embedding: rows are (epoch, point) pairs, epoch-major.

    coords (R, 2), epoch (R,) expert epoch, point (R,) index into the point lists, label (R,)
    class; kinds / sources have one entry per point.
    """

    coords: torch.Tensor
    epoch: torch.Tensor
    point: torch.Tensor
    label: torch.Tensor
    epochs: list[int]
    kinds: list[str]
    sources: list[str]
    class_names: list[str]
    reducer: str
    seed: int

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"coords": self.coords, "epoch": self.epoch, "point": self.point, "label": self.label}

    def info(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "kinds": self.kinds, "sources": self.sources, "class_names": self.class_names,
                "reducer": self.reducer, "seed": self.seed, "rows": len(self.coords)}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> "Embedding":
        if len(tensors["coords"]) != info["rows"]:
            raise ValueError(f"G3 cache is inconsistent: {len(tensors['coords'])} rows, description says "
                             f"{info['rows']}; delete the run's diagnostics/g3.* files and compute it again")
        return cls(tensors["coords"], tensors["epoch"].long(), tensors["point"].long(), tensors["label"].long(),
                   list(info["epochs"]), list(info["kinds"]), list(info["sources"]), list(info["class_names"]),
                   info["reducer"], int(info["seed"]))


def joint_embedding(trajectory: torch.Tensor, epochs: list[int], points: PointSet, spec: ConvNetSpec,
                    reducer: str, seed: int, class_names: list[str], device: torch.device | str = "cpu",
                    progress: ProgressFn | None = None) -> Embedding:
    """Embed every point under every chosen epoch of `trajectory` (E+1, P) in one 2-D map."""
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r}; choose one of {', '.join(REDUCERS)}")
    table = feature_table(trajectory, epochs, points.images.to(device), spec)  # (T, N, D)
    if progress:
        progress(1, 2)
    n_epochs, n_points, _ = table.shape
    coords = reduce(standardise(table.reshape(n_epochs * n_points, -1)), reducer, seed)  # (T*N, 2)
    if progress:
        progress(2, 2)
    epoch = torch.tensor(epochs).repeat_interleave(n_points)
    point = torch.arange(n_points).repeat(n_epochs)
    return Embedding(coords, epoch, point, points.labels[point], list(epochs), points.kinds, points.sources,
                     list(class_names), reducer, seed)
