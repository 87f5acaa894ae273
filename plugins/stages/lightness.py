"""PGDiff's lightness property (colorization): the gray of x0 follows the gray of the target.

Loss (per sample, sum-reduced): ``||gray(x0) - gray(f(y))||^2`` with gray = mean of R, G, B and
``f`` a restorer (``identity`` by default, i.e. the observation itself).  Only the lightness is
constrained, so the colours are left to the prior (and to ``color-statistics``).

``region = "known"`` restricts the loss to pixels the mask marks known (the old-photo composite:
lightness of the restorer's output outside the scratches); without a mask every pixel is known,
as in the official code.
"""

from __future__ import annotations

import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl

from .pgdiff_options import LightnessOptions
from .properties import gray, known_pixels, sum_per_sample
from .smooth_semantics import RestorerTarget


class Lightness(RestorerTarget):
    name = "lightness"
    description = "PGDiff colorization property: ||gray(x0) - gray(f(y))||^2, gray = RGB mean."
    Options = LightnessOptions

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        diff = gray(state.x0) - gray(self.target(ctx, state))
        if self.options.region == "known":
            known = known_pixels(ctx, diff)
            if known is not None:
                diff = diff * known
        return sum_per_sample(diff.pow(2))
