"""Keep the pixels the user did not ask to change: paste the known part of y back.

Where the mask is 0 (known) the output takes the observation's pixels; where it is 1 (missing)
it keeps what the sampler made.  DifFace pastes once at the end (its ``mask_back``); with
``every_step`` the known pixels of each ``x_prev`` are also replaced by ``y`` diffused to
``t_prev`` (RePaint-style), which forces the generated part to agree with them throughout.
Any recipe with a mask can use it: inpainting, old photos with scratch masks.

With ``operator = { use = ... }`` (a linear operator with a pseudo-inverse) the paste is the
range-space projection ``x <- x - H^+ (H x - y)``, which for a mask is exactly the paste of the
known pixels, and for other operators makes the output consistent with y (``H x = y``) while
keeping what ``H`` does not see; ``every_step`` then projects onto ``sqrt(abar) y + sqrt(1 -
abar) H(z)``.
"""

from __future__ import annotations

import math

import kornia
import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.errors import InputError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.loop_api import RunResult
from guidestack.engine.stage import Stage
from guidestack.plugins.degradations.binding import bind, needs_mask

from .difface_options import PasteKnownOptions


class PasteKnown(Stage):
    name = "paste-known"
    description = "Paste the observation's known pixels (mask == 0) into the latent each step and/or the output."
    Options = PasteKnownOptions

    @classmethod
    def requires_for(cls, options: PasteKnownOptions) -> tuple[str, ...]:
        if options.operator is None or needs_mask(options.operator):
            return ("mask",)
        return ()

    def setup(self, ctx: RunContext) -> None:
        self.operator = None
        if self.options.operator is not None:
            self.operator, self.y = bind(self.options.operator, ctx)
            return
        if ctx.observation.mask is None:
            raise InputError(
                f"stage '{self.id}' pastes known pixels back and needs a mask (--mask)"
            )

    def _consistent(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x - H^+ (H x - y)``: the range part of ``x`` replaced by the measurement's."""
        return x - self.operator.pinv(self.operator(x) - y.to(x.dtype)).to(x.dtype)

    def _missing(self, ctx: RunContext, like: torch.Tensor) -> torch.Tensor:
        mask = ctx.observation.mask.to(device=like.device, dtype=like.dtype).clamp(0.0, 1.0)
        return mask.amax(dim=1, keepdim=True) if mask.shape[1] != 1 else mask

    @hookimpl
    def project(self, ctx: RunContext, state: StepState) -> None:
        if not self.options.every_step:
            return
        if self.operator is not None:
            abar = ctx.abar(state.t_prev)
            y = self.y
            if abar < 1.0:
                noise = self.operator(ctx.randn_like(state.x_prev))
                y = math.sqrt(abar) * y + math.sqrt(1.0 - abar) * noise
            state.x_prev = self._consistent(state.x_prev, y)
            return
        missing = self._missing(ctx, state.x_prev)
        y = ctx.observation.image.to(state.x_prev.dtype)
        abar = ctx.abar(state.t_prev)
        if abar < 1.0:
            y = math.sqrt(abar) * y + math.sqrt(1.0 - abar) * ctx.randn_like(y)
        state.x_prev = missing * state.x_prev + (1.0 - missing) * y

    @hookimpl
    def finalize(self, ctx: RunContext, result: RunResult) -> None:
        if not self.options.final:
            return
        if self.operator is not None:
            result.image = self._consistent(result.image, self.y).clamp(-1.0, 1.0)
            return
        missing = self._missing(ctx, result.image)
        if self.options.feather > 0:
            missing = torch.maximum(missing, feather(missing, self.options.feather))
        y = ctx.observation.image.to(result.image.dtype)
        result.image = missing * result.image + (1.0 - missing) * y


def feather(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian-blurred copy of ``mask`` (kept where larger, it only spreads outwards)."""
    k = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(mask, (k, k), (sigma, sigma), border_type="replicate")
