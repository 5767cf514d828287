"""G4: easy and hard test images, and how well nets trained on a set do on each.

Hardness of test image i: for each held-out expert e, h_e(i) = the first epoch t (0..E) at
which theta*_{e,t} classifies image i correctly, or E + 1 if it never does (hardest);
h(i) = mean over experts of h_e(i). The split is at the median: with m the lower median of
h over the test set, easy = {i : h(i) <= m}, hard = {i : h(i) > m}. Ties sit on the easy
side, so the hard part can be smaller than half; its size is reported with the result.
When that leaves no hard image (m is the largest value, e.g. more than half of the images
are never learned by weak experts), the tie goes the other way: easy = {h < m}, hard = {h >= m}.
"""
from __future__ import annotations

import statistics

import torch

from seqmatch_engine.core.control import ProgressFn
from seqmatch_engine.maths.models import ConvNetSpec, convnet_forward


@torch.no_grad()
def expert_correctness(experts: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, spec: ConvNetSpec,
                       batch_size: int = 1000, progress: ProgressFn | None = None) -> torch.Tensor:
    """correct (n, E+1, N) bool: expert e at epoch t classifies image i correctly; experts (n, E+1, P)."""
    n, steps = experts.shape[:2]
    device = images.device
    correct = torch.zeros(n, steps, len(images), dtype=torch.bool)
    for e in range(n):
        for t in range(steps):
            params = experts[e, t].to(device)
            predictions = torch.cat([convnet_forward(params, images[i:i + batch_size], spec).argmax(1)
                                     for i in range(0, len(images), batch_size)])
            correct[e, t] = (predictions == labels).cpu()
            if progress:
                progress(e * steps + t + 1, n * steps)
    return correct


def first_correct_epoch(correct: torch.Tensor) -> torch.Tensor:
    """(n, E+1, N) bool -> (n, N) first epoch with a correct answer, E + 1 where never correct."""
    steps = correct.shape[1]
    epochs = torch.arange(steps).view(1, -1, 1).expand_as(correct)
    return torch.where(correct, epochs, torch.full_like(epochs, steps)).min(1).values


def hardness(correct: torch.Tensor) -> torch.Tensor:
    """Hardness (N,) float: mean over experts of the first correct epoch (E + 1 for never)."""
    return first_correct_epoch(correct).double().mean(0)


def split_easy_hard(hardness_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Masks easy (N,), hard (N,) and the threshold m (lower median): easy = h <= m, hard = h > m,
    or easy = h < m, hard = h >= m when no h exceeds m."""
    threshold = float(hardness_values.median())  # torch's median is the lower median
    easy = hardness_values <= threshold
    if bool(easy.all()):
        easy = hardness_values < threshold
    return easy, ~easy, threshold


def masked_accuracy(predictions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Accuracy of predictions (N,) on the images selected by mask (N,); None for an empty mask."""
    if not bool(mask.any()):
        return None
    return float((predictions[mask] == labels[mask]).double().mean())


def summarise(values: list[float | None]) -> tuple[float | None, float | None, list[float | None]]:
    """(mean, sample std, values) of per-net accuracies; mean and std None if any is None."""
    if not values or any(v is None for v in values):
        return None, None, values
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, values
