"""Mirror symmetry: a guidance property for aligned faces.

Aligned faces are close to left-right symmetric, and a diffusion prior restoring a damaged face
is free to invent an asymmetric one (one eye sharper, a lopsided jaw).  This stage returns the
per-sample loss ``1/2 ||W * (B(x0) - flip(B(x0)))||^2``: ``B`` blurs by ``sigma`` pixels
(``sigma = 0``: no blur) so that only structure coarser than ``sigma`` is made symmetric, and
``W`` is a smooth bump over the centred box of relative size ``extent`` where an aligned face
is, so the background and the shoulders may stay asymmetric.  The halving counts each mirrored
pair once.
"""

from __future__ import annotations

import math

import torch
from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import Stage

from .options import MIRROR_SYMMETRY, MirrorSymmetryOptions


def blur_matrix(n: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``[n, n]`` matrix of a 1-D Gaussian blur with replicated borders (rows sum to 1)."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1)
    kernel = torch.exp(-0.5 * (offsets.double() / sigma) ** 2)
    kernel = kernel / kernel.sum()
    rows = torch.arange(n).view(-1, 1).expand(n, offsets.numel())
    cols = (rows + offsets.view(1, -1)).clamp(0, n - 1)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.index_put_((rows.reshape(-1), cols.reshape(-1)), kernel.repeat(n), accumulate=True)
    return matrix.to(device=like.device, dtype=like.dtype)


def face_window(height: int, width: int, extent: float, like: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` weights: a separable raised-cosine bump over the centred box of relative size
    ``extent``, 1 at the centre and 0 outside the box.

    It tapers smoothly so the guidance leaves no seam at the box's border, and it is symmetric
    about the vertical axis, so a pixel and its mirror always have the same weight.
    """

    def bump(n: int) -> torch.Tensor:
        u = (torch.arange(n, dtype=torch.float64) + 0.5 - n / 2) / (extent * n / 2)
        w = torch.where(u.abs() < 1, torch.cos(0.5 * math.pi * u) ** 2, torch.zeros_like(u))
        return w.to(device=like.device, dtype=like.dtype)

    return bump(height).view(-1, 1) * bump(width).view(1, -1)


def asymmetry(x: torch.Tensor, sigma: float = 0.0, extent: float = 1.0) -> torch.Tensor:
    """``1/2 ||W * (B(x) - flip(B(x)))||^2`` per sample, shape ``[N]``.

    Computed one sample at a time: batched matrix products may sum in a different order than
    single ones, and a batch must give exactly the results of single runs.
    """
    height, width = x.shape[-2:]
    weights = face_window(height, width, extent, x)
    blur_h = blur_matrix(height, sigma, x) if sigma > 0 else None
    blur_w = blur_matrix(width, sigma, x).T if sigma > 0 else None
    losses = []
    for sample in x.unbind(0):
        b = sample if blur_h is None else blur_h @ sample @ blur_w
        losses.append(0.5 * (weights * (b - b.flip(-1))).pow(2).sum())
    return torch.stack(losses)


class MirrorSymmetry(Stage):
    name = "mirror-symmetry"
    description = MIRROR_SYMMETRY
    Options = MirrorSymmetryOptions

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        return asymmetry(state.x0, self.options.sigma, self.options.extent)
