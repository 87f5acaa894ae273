"""PGDiff's unmasked-region property (inpainting): known pixels of x0 follow the observation.

Loss (per sample, sum-reduced): ``||(1 - M) * (x0 - y)||^2`` with ``M = 1`` where missing.  Its
gradient is exactly zero inside the mask, so the hole is filled by the prior alone, steered only
through the prior's coupling of the hole to the guided pixels.

With ``operator = { use = ... }`` the property is the general measurement term
``||H(x0) - y||^2`` with y in H's own space (``{ use = "mask" }`` is the default's loss; a
downsample makes it PGDiff-style super-resolution, with y kept at its low resolution).
"""

from __future__ import annotations

import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import Stage
from guidestack.plugins.degradations.binding import bind, needs_mask

from .pgdiff_options import UnmaskedRegionOptions
from .properties import require_input, sum_per_sample


class UnmaskedRegion(Stage):
    name = "unmasked-region"
    description = "PGDiff inpainting property: ||(1-M)(x0 - y)||^2 (M = 1 where missing); no gradient in the hole."
    Options = UnmaskedRegionOptions

    @classmethod
    def requires_for(cls, options: UnmaskedRegionOptions) -> tuple[str, ...]:
        if options.operator is None or needs_mask(options.operator):
            return ("mask",)
        return ()

    def setup(self, ctx: RunContext) -> None:
        self.operator = None
        if self.options.operator is not None:
            self.operator, self.y = bind(self.options.operator, ctx)
            return
        mask = require_input(ctx, "mask", self.id, "it marks the pixels to fill in")
        self.known = (mask < 0.5).to(ctx.observation.image.dtype)

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        if self.operator is not None:
            return sum_per_sample((self.operator(state.x0) - self.y.to(state.x0.dtype)).pow(2))
        y = ctx.observation.image.to(state.x0.dtype)
        known = self.known.to(device=state.x0.device, dtype=state.x0.dtype)
        return sum_per_sample((known * (state.x0 - y)).pow(2))
