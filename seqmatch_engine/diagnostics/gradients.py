"""G1: how alike the pixel gradients of the synthetic subsets are, recorded during distillation.

At a logged outer iteration every synthetic image i (frozen subsets included, measured only)
has a gradient g_i = dL/dx_i. With u_i = g_i / ||g_i||:

    m_k          = mean of u_i over the images of group k            (group = subset S_k)
    matrix[k, l] = cos(m_k, m_l)                                      (K x K, diagonal 1)
    within[k]    = mean of cos(g_i, g_j) over pairs i != j in group k with y_i = y_j

Images whose gradient is exactly zero (not drawn in any minibatch of the unroll) have no
direction and are left out; a group without any usable image gives NaN (null in JSON).
Static MTT has one subset; it is split per class into `nominal_groups` nominal groups so
that both methods are drawn on the same axes.
"""
from __future__ import annotations

import math

import torch

from seqmatch_engine.core.config import split_ipc

COUPLING_FRACTION = 0.2  # the coupling index averages the last 20 % of the G1 records


def unit_rows(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (n, ...) -> unit rows u (n, D) and a mask (n,) of rows with a non-zero gradient."""
    flat = grads.detach().flatten(1).double()
    norms = flat.norm(dim=1)
    usable = norms > 0
    return flat / norms.clamp_min(1e-300).unsqueeze(1), usable


def between_group_cosines(units: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(K, K) cosine between the groups' mean unit gradients; units (n, D), groups (n,) in [0, K)."""
    means = torch.stack([units[groups == k].mean(0) if bool((groups == k).any())
                         else torch.full_like(units[0], math.nan) for k in range(num_groups)])
    norms = means.norm(dim=1, keepdim=True)
    directions = means / norms  # a zero mean (perfectly cancelling gradients) gives NaN: no direction
    return directions @ directions.T


def within_class_cosine(units: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cos(u_i, u_j) over all pairs i != j with equal labels, pooled over classes; NaN if no pair."""
    total, pairs = 0.0, 0
    for c in labels.unique():
        rows = units[labels == c]
        m = len(rows)
        if m < 2:
            continue
        gram = rows @ rows.T
        total += float(gram.sum() - gram.diagonal().sum())
        pairs += m * (m - 1)
    return total / pairs if pairs else math.nan


def gradient_similarity(grads: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                        num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """G1 of one iteration: grads (n, C, H, W), labels (n,), groups (n,) -> matrix (K, K), within (K,)."""
    units, usable = unit_rows(grads)
    labels, groups = labels.cpu()[usable.cpu()], groups.cpu()[usable.cpu()]
    units = units.cpu()[usable.cpu()]
    matrix = between_group_cosines(units, groups, num_groups) if len(units) else \
        torch.full((num_groups, num_groups), math.nan, dtype=torch.float64)
    within = torch.tensor([within_class_cosine(units[groups == k], labels[groups == k])
                           for k in range(num_groups)], dtype=torch.float64)
    return matrix, within


def nominal_split(labels: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Groups (n,) for static MTT: within each class, its images in order are cut by split_ipc.

    A class with m images gets groups sized split_ipc(m, min(num_groups, m)) (larger first),
    so a class of 5 images in 2 groups is [0, 0, 0, 1, 1]. num_groups is capped at the
    smallest class size, since every group needs an image of every class.
    """
    labels = labels.cpu()
    counts = torch.bincount(labels)
    groups_per_class = min(num_groups, int(counts[counts > 0].min()))
    groups = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        rows = torch.nonzero(labels == c).flatten()
        sizes = split_ipc(len(rows), groups_per_class)
        groups[rows] = torch.arange(groups_per_class).repeat_interleave(torch.tensor(sizes))
    return groups


def stage_groups(subset_labels: list[torch.Tensor], nominal_groups: int | None) -> tuple[torch.Tensor, list[str]]:
    """Groups (n,) and names for the student set [S_1; ...; S_k] of one stage.

    Several subsets: group j = subset S_{j+1}. `nominal_groups` (static MTT only, one subset):
    the nominal split of that subset, named N1, N2, ...
    """
    if nominal_groups is not None:
        (labels,) = subset_labels
        groups = nominal_split(labels, nominal_groups)
        return groups, [f"N{j + 1}" for j in range(int(groups.max()) + 1)]
    groups = torch.cat([torch.full((len(labels),), j, dtype=torch.long) for j, labels in enumerate(subset_labels)])
    return groups, [f"S{j + 1}" for j in range(len(subset_labels))]


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def g1_values(grads: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
              num_groups: int) -> tuple[list[list[float | None]], list[float | None]]:
    """gradient_similarity as JSON-ready lists: matrix (K x K) and within (K), rounded to 6 decimals, NaN -> None."""
    matrix, within = gradient_similarity(grads, labels, groups, num_groups)
    return [[_json_number(v) for v in row] for row in matrix.tolist()], [_json_number(v) for v in within.tolist()]


def mean_off_diagonal(matrix: list[list[float | None]]) -> float | None:
    """Mean of the entries matrix[a][b], a != b, that are not null; None if there are none."""
    values = [v for a, row in enumerate(matrix) for b, v in enumerate(row) if a != b and v is not None]
    return sum(values) / len(values) if values else None


def coupling_index(matrices: list[list[list[float | None]]], fraction: float = COUPLING_FRACTION) -> float | None:
    """One number per run: how strongly the subsets are pushed in the same direction late in distillation.

    Take the G1 records' between-group cosine matrices in recording order that have at least two
    groups (SeqMatch stages >= 2, every record of static MTT with its nominal groups); keep the last
    ceil(fraction * count) of them; average their mean off-diagonal entries. Range [-1, 1]: 1 = all
    groups move their images the same way (fully coupled), 0 = unrelated directions. None when no
    matrix has two groups.
    """
    usable = [m for m in matrices if len(m) >= 2 and mean_off_diagonal(m) is not None]
    if not usable:
        return None
    tail = usable[-max(1, math.ceil(fraction * len(usable))):]
    return sum(mean_off_diagonal(m) for m in tail) / len(tail)
