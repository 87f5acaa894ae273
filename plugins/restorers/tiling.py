"""Running an image network on overlapping tiles, blended with linear ramps.

Large inputs go through a network tile by tile so memory stays bounded; where two tiles overlap
their outputs are averaged with weights that ramp linearly across the overlap, so no seam shows.
Tiles are at most ``tile`` pixels on a side and always cover the image exactly (the last tile of a
row is shifted back to end at the border rather than padded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(size: int, ramp: int, first: bool, last: bool) -> torch.Tensor:
    """1-D weights: linear over ``ramp`` samples at the sides shared with a neighbouring tile."""
    weights = torch.ones(size, dtype=torch.float32)
    if ramp <= 0:
        return weights
    up = (torch.arange(size, dtype=torch.float32) + 0.5) / ramp
    if not first:
        weights = torch.minimum(weights, up)
    if not last:
        weights = torch.minimum(weights, up.flip(0))
    return weights.clamp_min(1e-3)


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
) -> torch.Tensor:
    """``fn(x)`` computed on tiles of ``x`` ([N, C, H, W]); ``fn`` multiplies sides by ``scale``."""
    n, _, h, w = x.shape
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    if len(ys) == 1 and len(xs) == 1:
        return fn(x)
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, h * scale, w * scale, device=x.device, dtype=torch.float32)
    th, tw = min(tile, h), min(tile, w)
    ramp = overlap * scale
    for i, y0 in enumerate(ys):
        wy = _ramp(th * scale, ramp, i == 0, i == len(ys) - 1)
        for j, x0 in enumerate(xs):
            wx = _ramp(tw * scale, ramp, j == 0, j == len(xs) - 1)
            part = fn(x[..., y0 : y0 + th, x0 : x0 + tw]).float()
            if out is None:
                out = torch.zeros(n, part.shape[1], h * scale, w * scale, device=x.device)
            weight = (wy[:, None] * wx[None, :]).to(x.device)
            rows = slice(y0 * scale, (y0 + th) * scale)
            cols = slice(x0 * scale, (x0 + tw) * scale)
            out[..., rows, cols] += part * weight
            total[..., rows, cols] += weight
    assert out is not None
    return (out / total).to(x.dtype)
