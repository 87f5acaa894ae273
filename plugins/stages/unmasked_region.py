"""PGDiff's unmasked-region property (inpainting): known pixels of x0 follow the observation.

Loss (per sample, sum-reduced): ``||(1 - M) * (x0 - y)||^2`` with ``M = 1`` where missing.  Its
gradient is exactly zero inside the mask, so the hole is filled by the prior alone, steered only
through the prior's coupling of the hole to the guided pixels.
"""

from __future__ import annotations

import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import GuidanceOptions, Stage

from .properties import require_input, sum_per_sample


class UnmaskedRegionOptions(GuidanceOptions):
    pass


class UnmaskedRegion(Stage):
    name = "unmasked-region"
    description = "PGDiff inpainting property: ||(1-M)(x0 - y)||^2 (M = 1 where missing); no gradient in the hole."
    Options = UnmaskedRegionOptions
    requires = ("mask",)

    def setup(self, ctx: RunContext) -> None:
        mask = require_input(ctx, "mask", self.id, "it marks the pixels to fill in")
        self.known = (mask < 0.5).to(ctx.observation.image.dtype)

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        y = ctx.observation.image.to(state.x0.dtype)
        known = self.known.to(device=state.x0.device, dtype=state.x0.dtype)
        return sum_per_sample((known * (state.x0 - y)).pow(2))
