"""Labels of a synthetic set: hard class indices (n,) int64, or soft labels as logits (n, C) float.

Every loss takes `targets(labels)`: the class indices themselves, or the softmax of the logits, so that
F.cross_entropy computes the ordinary cross-entropy for hard labels and, for soft ones, the soft cross-entropy
mean_b sum_c -log_softmax(output)_bc * softmax(label_logits)_bc (DATM's), differentiable in the logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def is_soft(labels: torch.Tensor) -> bool:
    """Soft labels are logits (n, C); hard ones are class indices (n,)."""
    return labels.dim() == 2


def targets(labels: torch.Tensor) -> torch.Tensor:
    """What cross-entropy is taken against: class indices (n,), or class probabilities (n, C) of soft logits."""
    return F.softmax(labels, dim=1) if is_soft(labels) else labels


def hard(labels: torch.Tensor) -> torch.Tensor:
    """Class indices (n,): the labels themselves, or the top class of soft ones."""
    return labels.argmax(1) if is_soft(labels) else labels


def soft_cross_entropy(outputs: torch.Tensor, label_logits: torch.Tensor) -> torch.Tensor:
    """mean_b sum_c -log_softmax(outputs)_bc * softmax(label_logits)_bc, written out (the plain formula beside
    F.cross_entropy(outputs, targets(label_logits)), which the engine uses)."""
    return -(F.log_softmax(outputs, dim=1) * F.softmax(label_logits, dim=1)).sum(1).mean()


def confidence(labels: torch.Tensor) -> torch.Tensor:
    """(n,) probability of each image's top class: 1 for hard labels."""
    return targets(labels).max(1).values if is_soft(labels) else torch.ones(len(labels))
