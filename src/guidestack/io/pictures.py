"""Pictures people would rather look at than tensors: labelled side-by-side comparisons,
trajectories of x0 predictions and labelled grids for benchmark reports.

Tensors are ``[C, H, W]`` (or ``[1, C, H, W]``): three channels are images in [-1, 1], ONE
channel is a mask in [0, 1] shown as grayscale (white = missing), because inside the engine
images always have three channels and masks one.  Every panel is scaled to a common height
(nearest-neighbour when enlarging, so small prior outputs show their real pixels instead of
invented smoothness); the result is an RGB ``PIL.Image`` to write with
:func:`guidestack.io.outputs.save_pil`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .outputs import tensor_to_pil

GAP = 4
LABEL_PAD = 2
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def panel_image(tensor: torch.Tensor) -> Image.Image:
    """One tensor as an RGB picture (one channel = mask, three = image)."""
    channels = tensor.shape[-3] if tensor.dim() >= 3 else 0
    kind = "mask" if channels == 1 else "image"
    return tensor_to_pil(tensor, kind=kind).convert("RGB")


def compare_grid(
    panels: Sequence[tuple[str, torch.Tensor]],
    *,
    height: int | None = None,
    gap: int = GAP,
) -> Image.Image:
    """Panels side by side, ``gap`` pixels apart, each with its label above it.

    ``height`` defaults to the tallest panel's height.  The label strip is left out when every
    label is empty.
    """
    if not panels:
        raise ValueError("compare_grid needs at least one panel")
    return make_grid(
        [[tensor for _, tensor in panels]],
        col_labels=[label for label, _ in panels],
        height=height,
        gap=gap,
    )


def trajectory_strip(
    frames: Sequence[tuple[int, torch.Tensor]],
    *,
    count: int | None = None,
    height: int | None = None,
    gap: int = GAP,
) -> Image.Image:
    """x0 predictions labelled ``t=...``; with ``count``, that many evenly spaced frames
    (always including the first and the last)."""
    if not frames:
        raise ValueError("trajectory_strip needs at least one frame")
    chosen = list(frames)
    if count is not None and count < len(chosen):
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        picks = np.unique(np.round(np.linspace(0, len(chosen) - 1, count)).astype(int))
        chosen = [chosen[i] for i in picks]
    return compare_grid([(f"t={t}", x) for t, x in chosen], height=height, gap=gap)


def make_grid(
    rows: Sequence[Sequence[torch.Tensor | None]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    height: int | None = None,
    gap: int = GAP,
) -> Image.Image:
    """A labelled table of pictures; ``None`` leaves a cell blank (e.g. a method that failed).

    Every cell is scaled to ``height`` (default: the tallest cell); each column is as wide as its
    widest cell, narrower cells are centred.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("make_grid needs at least one picture")
    n_cols = max(len(r) for r in rows)
    for name, labels, n in (
        ("row_labels", row_labels, len(rows)),
        ("col_labels", col_labels, n_cols),
    ):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} entries for {n} {name[:3]}s")
    pictures = [[None if x is None else panel_image(x) for x in row] for row in rows]
    present = [p for row in pictures for p in row if p is not None]
    if not present:
        raise ValueError("make_grid needs at least one picture")
    cell_h = int(height) if height is not None else max(p.height for p in present)
    if cell_h < 1:
        raise ValueError(f"height must be positive, got {height}")
    pictures = [[None if p is None else _fit_height(p, cell_h) for p in row] for row in pictures]
    col_w = [
        max((row[c].width for row in pictures if c < len(row) and row[c] is not None), default=1)
        for c in range(n_cols)
    ]

    font = _font()
    line_h, top = _line_metrics(font)
    col_strip = line_h + 2 * LABEL_PAD if col_labels and any(col_labels) else 0
    label_w = 0
    if row_labels and any(row_labels):
        label_w = max(_text_width(font, s) for s in row_labels) + 2 * LABEL_PAD
    x0 = label_w + (gap if label_w else 0)

    width = x0 + sum(col_w) + gap * (n_cols - 1)
    total_h = col_strip + len(rows) * cell_h + gap * (len(rows) - 1)
    canvas = Image.new("RGB", (width, total_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    col_x = [x0 + sum(col_w[:c]) + gap * c for c in range(n_cols)]
    if col_strip:
        for c, label in enumerate(col_labels or []):
            text = _fit_text(font, label, col_w[c])
            x = col_x[c] + (col_w[c] - _text_width(font, text)) // 2
            draw.text((x, LABEL_PAD - top), text, fill=TEXT, font=font)
    for r, row in enumerate(pictures):
        y = col_strip + r * (cell_h + gap)
        if label_w and row_labels:
            text = _fit_text(font, row_labels[r], label_w - 2 * LABEL_PAD)
            draw.text((LABEL_PAD, y + (cell_h - line_h) // 2 - top), text, fill=TEXT, font=font)
        for c, picture in enumerate(row):
            if picture is not None:
                canvas.paste(picture, (col_x[c] + (col_w[c] - picture.width) // 2, y))
    return canvas


def _fit_height(picture: Image.Image, height: int) -> Image.Image:
    if picture.height == height:
        return picture
    width = max(1, round(picture.width * height / picture.height))
    enlarge = height > picture.height
    resample = Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS
    return picture.resize((width, height), resample=resample)


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _line_metrics(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[int, int]:
    """Height of a line of text and the offset of its top, so labels never get clipped."""
    left, top, right, bottom = font.getbbox("Ag|=0")
    return int(bottom - top), int(top)


def _text_width(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> int:
    if not text:
        return 0
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _fit_text(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str, width: int) -> str:
    """``text`` shortened with ``..`` until it fits ``width`` pixels."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "..") > width:
        text = text[:-1]
    return text + ".." if text else ""
