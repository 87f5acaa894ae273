"""Physical damage with a mask of the damaged pixels (1 = missing): ODEdit's unknown masks
(random vertical lines and random pixels in random colours), free-form brush masks, scratches.

Sizes are fractions of the image side, so a severity means the same at 64 and 512 pixels.
Every draw consumes a fixed amount of randomness per line/stroke, so with one seed a higher
severity damages a superset of the pixels of a lower one (tests check the monotone damage).
"""

from __future__ import annotations

import math

import torch

from .options import FreeFormMaskOptions, RandomLinesOptions, RandomPixelsOptions, ScratchesOptions
from .stochastic import Stochastic, paint, uniform


def _px(fraction: float, side: int) -> float:
    return max(1.0, fraction * side)


class RandomLines(Stochastic):
    """ODEdit's unknown mask: vertical lines at random columns, each in a random colour."""

    name = "random-lines"
    description = "Vertical lines in random colours at random columns (ODEdit's unknown mask)."
    Options = RandomLinesOptions
    severities = {
        1: {"fraction": 0.03},
        2: {"fraction": 0.07},
        3: {"fraction": 0.12},
        4: {"fraction": 0.2},
        5: {"fraction": 0.3},
    }

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        _, c, h, w = x.shape
        width = max(1, round(_px(self.options.width, w)))
        slots = max(1, w // width)
        count = min(slots, max(1, round(self.options.fraction * w / width)))
        order = torch.randperm(slots, generator=generator, device=generator.device)[:count]
        colours = uniform((slots, c), generator, x) * 2 - 1  # one per slot: stable across levels
        mask = torch.zeros(1, 1, h, w, device=x.device, dtype=x.dtype)
        colour = torch.zeros(1, c, 1, w, device=x.device, dtype=x.dtype)
        for slot in order.tolist():
            cols = slice(slot * width, (slot + 1) * width)
            mask[..., cols] = 1.0
            colour[0, :, 0, cols] = colours[slot].view(c, 1)
        return {"mask": mask, "colour": colour}

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        return paint(x, drawn["mask"].to(x.dtype), drawn["colour"].to(x.dtype))


class RandomPixels(Stochastic):
    """ODEdit's other unknown mask: random pixels replaced by random colours."""

    name = "random-pixels"
    description = "Random pixels replaced by random colours (ODEdit's unknown mask)."
    Options = RandomPixelsOptions
    severities = {
        1: {"fraction": 0.02},
        2: {"fraction": 0.05},
        3: {"fraction": 0.1},
        4: {"fraction": 0.2},
        5: {"fraction": 0.35},
    }

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        _, c, h, w = x.shape
        count = max(1, round(self.options.fraction * h * w))
        order = torch.randperm(h * w, generator=generator, device=generator.device)[:count]
        mask = torch.zeros(h * w, device=x.device, dtype=x.dtype)
        mask[order.to(x.device)] = 1.0
        colour = uniform((1, c, h, w), generator, x) * 2 - 1
        return {"mask": mask.view(1, 1, h, w), "colour": colour}

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        return paint(x, drawn["mask"].to(x.dtype), drawn["colour"].to(x.dtype))


def polyline_mask(
    points: torch.Tensor, width: float, h: int, w: int, like: torch.Tensor
) -> torch.Tensor:
    """``[1, 1, h, w]``: 1 where a pixel centre lies within ``width / 2`` of the polyline
    ``points`` (``[K, 2]`` as (row, col) in pixels)."""
    rows = torch.arange(h, device=like.device, dtype=torch.float32).view(h, 1) + 0.5
    cols = torch.arange(w, device=like.device, dtype=torch.float32).view(1, w) + 0.5
    best = torch.full((h, w), float("inf"), device=like.device)
    pts = points.to(device=like.device, dtype=torch.float32)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        d = b - a
        length2 = float((d * d).sum().clamp_min(1e-9))
        t = (((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / length2).clamp(0, 1)
        dist = torch.sqrt((rows - a[0] - t * d[0]) ** 2 + (cols - a[1] - t * d[1]) ** 2)
        best = torch.minimum(best, dist)
    return (best <= width / 2).to(like.dtype).view(1, 1, h, w)


#: vertices per stroke (fixed, so each stroke consumes the same randomness at every severity)
STROKE_VERTICES = 5


class FreeFormMask(Stochastic):
    """Random brush strokes (the free-form masks of inpainting benchmarks); the strokes are
    filled with mid-gray (0), as ``mask``'s ``H(x) = x * (1 - mask)``."""

    name = "free-form-mask"
    description = "Random brush-stroke mask (free-form inpainting), strokes filled with gray."
    Options = FreeFormMaskOptions
    #: once drawn, ``H(x) = x * (1 - mask)``: a projection, its own adjoint and pseudo-inverse
    linear = True
    severities = {
        1: {"strokes": 2, "width": 0.05},
        2: {"strokes": 3, "width": 0.07},
        3: {"strokes": 4, "width": 0.09},
        4: {"strokes": 6, "width": 0.11},
        5: {"strokes": 8, "width": 0.13},
    }

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        _, _, h, w = x.shape
        side = min(h, w)
        mask = torch.zeros(1, 1, h, w, device=x.device, dtype=x.dtype)
        for _ in range(self.options.strokes):
            r = uniform((3 * STROKE_VERTICES,), generator, x.float())
            start = torch.stack([r[0] * h, r[1] * w])
            points = [start]
            angle = float(r[2]) * 2 * math.pi
            for k in range(1, STROKE_VERTICES):
                angle += (float(r[3 * k]) - 0.5) * math.pi
                step = (0.1 + 0.2 * float(r[3 * k + 1])) * side
                d = torch.tensor([math.sin(angle), math.cos(angle)]) * step
                nxt = points[-1] + d.to(start)
                nxt = torch.stack([nxt[0].clamp(0, h), nxt[1].clamp(0, w)])
                points.append(nxt)
            stroke = polyline_mask(torch.stack(points), _px(self.options.width, side), h, w, x)
            mask = torch.maximum(mask, stroke)
        return {"mask": mask}

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        return x * (1.0 - drawn["mask"].to(x.dtype))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self(y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self(y)


class Scratches(Stochastic):
    """Thin, slightly bent light lines across the picture, as on old prints; the scratched
    pixels are the mask (the picture under a scratch is lost)."""

    name = "scratches"
    description = "Thin light scratches across the image (old photos), with their mask."
    Options = ScratchesOptions
    severities = {
        1: {"count": 1},
        2: {"count": 2},
        3: {"count": 4},
        4: {"count": 7},
        5: {"count": 11},
    }

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        _, c, h, w = x.shape
        side = min(h, w)
        mask = torch.zeros(1, 1, h, w, device=x.device, dtype=x.dtype)
        shade = torch.zeros(1, c, h, w, device=x.device, dtype=x.dtype)
        for _ in range(self.options.count):
            r = uniform((6,), generator, x.float())
            # a chord between two random border points, bent through a displaced midpoint
            a = torch.stack([r[0] * h, r[1] * 0.0])
            b = torch.stack([r[2] * h, r[1] * 0.0 + w])
            if float(r[3]) < 0.5:  # mostly-vertical scratch instead
                a = torch.stack([r[0] * 0.0, r[1] * w])
                b = torch.stack([r[0] * 0.0 + h, r[2] * w])
            mid = (a + b) / 2 + (r[4] - 0.5) * 0.2 * side
            line = polyline_mask(torch.stack([a, mid, b]), _px(self.options.width, side), h, w, x)
            brightness = 0.6 + 0.4 * r[5].to(x.dtype)
            shade = torch.where(line > 0, brightness, shade)
            mask = torch.maximum(mask, line)
        return {"mask": mask, "colour": shade}

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        return paint(x, drawn["mask"].to(x.dtype), drawn["colour"].to(x.dtype))
