"""The one image-grid function: synthetic sets to viewable pictures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def image_grid(pixels: torch.Tensor, labels: torch.Tensor, num_classes: int, padding: int = 1,
               scale: int = 1) -> np.ndarray:
    """Pixels (n, C, H, W) in [0,1] and labels (n,) -> RGB uint8 (rows*H', cols*W', 3).

    One row per class in label order; columns are that class's images in set order.
    """
    pixels = pixels.detach().float().cpu().clamp(0, 1)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    labels = labels.cpu()
    rows = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    cols = max((len(r) for r in rows), default=0)
    _, _, h, w = pixels.shape
    cell_h, cell_w = h + padding, w + padding
    canvas = torch.ones(3, num_classes * cell_h + padding, max(cols, 1) * cell_w + padding)
    for c, members in enumerate(rows):
        for j, i in enumerate(members.tolist()):
            top, left = padding + c * cell_h, padding + j * cell_w
            canvas[:, top:top + h, left:left + w] = pixels[i]
    array = (canvas.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    if scale > 1:
        array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    return array


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an RGB uint8 array as PNG (via a temporary name, then rename)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)
