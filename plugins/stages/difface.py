"""DifFace's diffused estimator (Yue & Loy): start the reverse process from a restorer's output.

``x_N = sqrt(abar_N) f(y) + sqrt(1 - abar_N) eps`` at an ORIGINAL start time ``N``; the loop then
samples from exactly ``N`` (the first model call is at ``t = N``; the official code noises to
``N`` but makes its first call one grid step lower: ``first_call = "below"``).  Forward diffusion
shrinks the restorer's error by ``sqrt(abar_N)`` while the noise lets the prior replace what the
restorer got wrong, and different seeds give different plausible faces.

For inpainting, the paper's estimator (LaMa) sees the mask; the classical restorers do not, so
``fill_missing`` first fills the missing pixels from their surroundings (push-pull interpolation),
a training-free stand-in.  The inpainting variant's x0 refinement is the ``unmasked-region``
guidance property with the engine's ``x0`` rule, and the paste-back is the ``paste-known`` stage.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from guidestack.engine.context import InitialLatent, RunContext
from guidestack.engine.errors import InputError, UsageError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.registry import Registry
from guidestack.engine.restorer import restore
from guidestack.engine.sampler import grid_for
from guidestack.engine.stage import Stage

from .difface_options import DifFaceOptions
from .paste_known import PasteKnown


class DifFace(Stage):
    name = "difface"
    description = (
        "DifFace initial latent: diffuse a restorer's estimate f(y) to timestep N and sample from "
        "exactly N (inpainting: fill the hole first)."
    )
    Options = DifFaceOptions

    @classmethod
    def requires_for(cls, options: DifFaceOptions) -> tuple[str, ...]:
        return ("mask",) if options.fill_missing else ()

    def setup(self, ctx: RunContext) -> None:
        top = ctx.prior.num_train_timesteps - 1
        if self.options.start > top:
            raise UsageError(
                f"stage '{self.id}': start {self.options.start} is beyond the prior's last "
                f"timestep {top}"
            )
        if self.options.fill_missing and ctx.observation.mask is None:
            raise InputError(f"stage '{self.id}' has fill_missing = true and needs a mask (--mask)")
        self.restorer = self.options.restorer.build(ctx.registry)

    def estimate(self, ctx: RunContext) -> torch.Tensor:
        """The restorer's estimate f(y) (of the hole-filled observation with ``fill_missing``)."""
        y = ctx.observation.image
        if self.options.fill_missing:
            y = fill_missing(y, ctx.observation.mask)
        return restore(ctx, self.id, self.restorer, y)

    @hookimpl
    def initial_latent(self, ctx: RunContext) -> InitialLatent:
        n = self.options.start
        x0_hat = self.estimate(ctx).to(device=ctx.device, dtype=ctx.dtype)
        abar = ctx.abar(n)
        x_n = math.sqrt(abar) * x0_hat + math.sqrt(1.0 - abar) * ctx.randn_like(x0_hat)
        ctx.report[f"{self.id}.start"] = n
        return InitialLatent(x_n, self.first_call(ctx, n))

    def first_call(self, ctx: RunContext, n: int) -> int:
        """The ORIGINAL timestep of the first model call for a latent noised to ``n``."""
        if self.options.first_call == "start":
            return n
        grid = grid_for(ctx.sampler, ctx.prior.num_train_timesteps, start=n)
        if len(grid) < 2:
            raise UsageError(
                f"stage '{self.id}': first_call = 'below' needs a grid point below start {n}"
            )
        return grid[1]


def fill_missing(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill pixels where ``mask`` is 1 by push-pull interpolation of the known pixels.

    The known pixels are averaged down an image pyramid to 1x1 and the coarse averages pulled
    back up into the gaps, so a hole gets a smooth continuation of its border whatever its size.
    The pyramid always has full depth, so a sample's result does not depend on its batch.
    """
    known = (1.0 - mask.to(y.dtype)).clamp(0.0, 1.0)
    if known.shape[1] != 1:
        known = known.amin(dim=1, keepdim=True)
    return _push_pull(y * known, known)


def _push_pull(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``values`` are premultiplied by ``weights`` in [0, 1]; returns a fully filled image."""
    h, w = values.shape[-2:]
    if h == 1 and w == 1:
        return values / weights.clamp_min(1e-8)
    size = (math.ceil(h / 2), math.ceil(w / 2))
    coarse = _push_pull(F.adaptive_avg_pool2d(values, size), F.adaptive_avg_pool2d(weights, size))
    up = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    # where the weight is w < 1 the fine value holds w of the pixel; the rest comes from above
    return values + (1.0 - weights) * up


STAGES = (DifFace, PasteKnown)


def contribute(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
