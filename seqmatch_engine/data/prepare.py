"""From raw uint8 datasets to model-ready tensors: splits, normalisation, ZCA, display mapping."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from seqmatch_engine.core.config import DataConfig
from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.data.datasets import DatasetError, ImageDataset, ImageShape, load_dataset

ZCA_EPS = 0.1


@dataclass(frozen=True)
class PixelTransform:
    """Normalisation (and optional ZCA) of pixels, with its exact inverse for display."""

    mean: torch.Tensor                 # (C,)
    std: torch.Tensor                  # (C,)
    zca_mean: torch.Tensor | None = None     # (D,) with D = C*H*W
    zca_matrix: torch.Tensor | None = None   # (D, D) whitening
    zca_inverse: torch.Tensor | None = None  # (D, D) its inverse

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0,1] (B, C, H, W) -> model inputs of the same shape."""
        x = (pixels - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        if self.zca_matrix is not None:
            x = ((x.flatten(1) - self.zca_mean) @ self.zca_matrix).view_as(x)
        return x

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs (B, C, H, W) -> viewable pixels in [0,1] (inverse ZCA, de-normalise, clamp)."""
        x = x.detach().float().cpu()
        if self.zca_inverse is not None:
            x = (x.flatten(1) @ self.zca_inverse + self.zca_mean).view_as(x)
        return (x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)).clamp(0, 1)


def fit_zca(x: torch.Tensor, eps: float = ZCA_EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ZCA whitening fitted on x (N, D): mean (D,), W = U diag(1/sqrt(s+eps)) U^T, and W^-1."""
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(len(x) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.clamp_min(0)
    whiten = eigenvectors @ torch.diag(1 / torch.sqrt(eigenvalues + eps)) @ eigenvectors.T
    unwhiten = eigenvectors @ torch.diag(torch.sqrt(eigenvalues + eps)) @ eigenvectors.T
    return mean.float(), whiten.float(), unwhiten.float()


@dataclass
class PreparedData(ImageShape):
    """Model-ready splits on one device. Images are (N, C, H, W) float, labels (N,) int64."""

    name: str
    class_names: tuple[str, ...]
    transform: PixelTransform
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor



def split_train_val(labels: torch.Tensor, num_classes: int, val_per_class: int, train_per_class: int | None,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced disjoint index sets (train, val) drawn from the training labels (N,)."""
    train, val = [], []
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        if len(rows) <= val_per_class:
            raise DatasetError(f"class {c} has only {len(rows)} training images; lower data.val_per_class "
                             f"(now {val_per_class}) so training images remain")
        val.append(rows[:val_per_class])
        rest = rows[val_per_class:]
        train.append(rest if train_per_class is None else rest[:train_per_class])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def prepare_data(config: DataConfig, seed: int, device: torch.device, dataset: ImageDataset | None = None) -> PreparedData:
    """Load (unless given), split, then standardise per channel, or (with ZCA, as MTT) whiten the raw
    [0,1] pixels without standardising first, onto `device`."""
    dataset = dataset or load_dataset(config.dataset, config.root, config.download)
    train_rows, val_rows = split_train_val(dataset.train_labels, dataset.num_classes, config.val_per_class,
                                           config.train_per_class, make_generator(seed, "val-split"))

    def as_float(images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255.0

    if config.zca:
        # Standardising first would scale every covariance eigenvalue by 1/std^2, so that ZCA_EPS
        # regularised ~25x less on CIFAR than in MTT's code.
        channels = dataset.train_images.shape[1]
        mean, whiten, unwhiten = fit_zca(as_float(dataset.train_images[train_rows]).flatten(1))
        transform = PixelTransform(torch.zeros(channels), torch.ones(channels), mean, whiten, unwhiten)
    else:
        transform = PixelTransform(torch.tensor(dataset.mean), torch.tensor(dataset.std))
    train = transform.forward(as_float(dataset.train_images[train_rows]))
    val = transform.forward(as_float(dataset.train_images[val_rows]))
    test = transform.forward(as_float(dataset.test_images))
    return PreparedData(
        name=dataset.name, class_names=dataset.class_names, transform=transform,
        train_images=train.to(device), train_labels=dataset.train_labels[train_rows].to(device),
        val_images=val.to(device), val_labels=dataset.train_labels[val_rows].to(device),
        test_images=test.to(device), test_labels=dataset.test_labels.to(device))
