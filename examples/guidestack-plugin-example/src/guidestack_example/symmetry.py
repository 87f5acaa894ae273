"""Mirror symmetry: a guidance property for aligned faces.

Aligned faces are close to left-right symmetric, and a diffusion prior restoring a damaged face
is free to invent an asymmetric one (one eye sharper, a lopsided jaw).  This stage returns the
per-sample loss ``1/2 ||B(x0) - flip(B(x0))||^2``, ``B`` a Gaussian blur of ``sigma`` pixels
(``sigma = 0``: no blur).  Blurring first makes only the coarse structure symmetric, so real
asymmetries of detail (a parting, a mole) are kept.  The halving counts each mirrored pixel
pair once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import GuidanceOptions, Stage


class MirrorSymmetryOptions(GuidanceOptions):
    sigma: float = Field(
        1.0,
        ge=0.0,
        le=16.0,
        description="blur x0 by this many pixels before comparing it with its mirror image "
        "(0 = compare pixels; larger = only coarse structure is made symmetric)",
    )


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with replicated borders (per channel)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), horizontal, groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), vertical, groups=channels)


def asymmetry(x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
    """``1/2 ||B(x) - flip(B(x))||^2`` per sample, shape ``[N]``."""
    b = gaussian_blur(x, sigma)
    return 0.5 * (b - b.flip(-1)).pow(2).flatten(1).sum(dim=1)


class MirrorSymmetry(Stage):
    name = "mirror-symmetry"
    description = "Guidance towards left-right symmetric faces: 1/2 ||B(x0) - flip(B(x0))||^2, B a Gaussian blur."
    Options = MirrorSymmetryOptions

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        return asymmetry(state.x0, self.options.sigma)
