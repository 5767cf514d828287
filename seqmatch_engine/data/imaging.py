"""The one image-grid code: synthetic sets to viewable pictures (a grid per subset, labelled panels side by side)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


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

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)


FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.truetype(FONT_PATH, size)
    except OSError:
        return ImageFont.load_default()


@dataclass(frozen=True)
class Panel:
    """One subset's grid: a title (S1), a subtitle, the title's colour, pixels (n, C, H, W) in [0,1], the class rows
    they sit in (n,), and, for a set with soft labels, their logits (n, classes): then each image shows its label's
    confidence as a bar under it, teal when the label's top class is the image's row, red (with that class's name)
    when it is another."""

    title: str
    subtitle: str
    colour: str
    pixels: torch.Tensor
    labels: torch.Tensor
    soft_labels: torch.Tensor | None = None


AGREES, DISAGREES = "#15803d", "#dc2626"  # a soft label's top class is / is not the image's row


def _draw_soft_labels(draw, panel: Panel, x: int, y: int, scale: int, class_names, font) -> None:
    """Confidence bars (and the top class where it is not the row's) under each cell of a panel's grid."""
    probabilities = torch.softmax(panel.soft_labels.detach().float().cpu(), dim=1)
    h, w = panel.pixels.shape[-2:]
    rows = panel.labels.cpu()
    for c in range(len(class_names)):
        for j, i in enumerate(torch.nonzero(rows == c).flatten().tolist()):
            left, bottom = x + (1 + j * (w + 1)) * scale, y + (1 + c * (h + 1) + h) * scale
            confidence, top = float(probabilities[i].max()), int(probabilities[i].argmax())
            colour = AGREES if top == c else DISAGREES
            draw.rectangle([left, bottom - scale - 2, left + round(confidence * w * scale), bottom], fill=colour)
            if top != c:
                draw.text((left + 2, bottom - scale - 4), class_names[top][:5], fill=colour, font=font, anchor="lb")


def labelled_panels(panels: list[Panel], class_names: tuple[str, ...] | list[str], caption: str | None = None
                    ) -> np.ndarray:
    """Grids side by side with the class names down the left and a two-line title over each (and an optional
    caption line on top) -> RGB uint8. Small images are enlarged (x4 up to 32 px, x2 up to 64 px) with visible
    pixels; text is a third of a row high, so it stays readable when the picture is shrunk to fit a panel."""

    num_classes = len(class_names)
    if not panels:
        return np.full((40, 200, 3), 255, np.uint8)
    grids = []
    for panel in panels:
        side = max(panel.pixels.shape[-2:])
        scale = 4 if side <= 32 else 2 if side <= 64 else 1
        grids.append(image_grid(panel.pixels, panel.labels, num_classes, padding=1, scale=scale))
    row_height = grids[0].shape[0] / num_classes
    text_size = max(13, round(row_height / 3))
    font, title_font, stage_font = _font(text_size), _font(text_size + 2), _font(text_size + 4)
    label_width = max(int(font.getlength(name)) for name in class_names) + 24
    widths = [max(grid.shape[1], int(stage_font.getlength(p.title)) + 4, int(title_font.getlength(p.subtitle)) + 4)
              for p, grid in zip(panels, grids)]
    top = text_size + 14 if caption else 0
    title_height, gap = 2 * text_size + 18, 18
    height = top + title_height + max(grid.shape[0] for grid in grids)
    width = max(label_width + sum(widths) + gap * (len(panels) - 1) + 4,
                int(title_font.getlength(caption)) + 8 if caption else 0)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((4, 2), caption, fill="#111827", font=title_font)
    for c, name in enumerate(class_names):
        draw.text((label_width - 8, top + title_height + row_height * (c + 0.5)), name, fill="#374151", font=font,
                  anchor="rm")
    x = label_width
    small = _font(max(10, text_size - 4))
    for panel, grid, panel_width in zip(panels, grids, widths):
        canvas.paste(Image.fromarray(grid), (x, top + title_height))
        if panel.soft_labels is not None:
            side = max(panel.pixels.shape[-2:])
            _draw_soft_labels(draw, panel, x, top + title_height, 4 if side <= 32 else 2 if side <= 64 else 1,
                              class_names, small)
        draw.text((x, top + 2), panel.title, fill=panel.colour, font=stage_font)
        draw.text((x, top + text_size + 8), panel.subtitle, fill="#64748b", font=title_font)
        x += panel_width + gap
    return np.asarray(canvas)
