"""ILVR (Choi et al., 2021): keep the low frequencies of the input, let the prior add the rest.

After every step in the window, the latent's low-pass band is replaced by that of the
observation diffused to the same noise level::

    x_prev <- x_prev - phi_N(x_prev) + phi_N(y_{t_prev}),   y_{t_prev} ~ q(y_{t_prev} | y)

``phi_N`` is an N-fold average-pool down-sampling followed by bilinear up-sampling.  The noise of
``y_{t_prev}`` comes from the run's per-sample generators, so a batch equals single runs.  It is a
projection (the ``project`` hook): no gradient, no guidance scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import Stage

from .options import ILVR, LowPassOptions


def low_pass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``phi_N``: average-pool by ``factor``, then bilinear back to the input size."""
    size = x.shape[-2:]
    small = F.avg_pool2d(x, factor, ceil_mode=True, count_include_pad=False)
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)


class LowPassConsistency(Stage):
    name = "ilvr"
    description = ILVR
    Options = LowPassOptions

    @hookimpl
    def project(self, ctx: RunContext, state: StepState) -> None:
        if not self.active(state.t):
            return
        x = state.x_prev
        y = ctx.observation.image.to(device=x.device, dtype=x.dtype)
        if state.t_prev >= 0:
            abar = ctx.abar(state.t_prev)
            y = math.sqrt(abar) * y + math.sqrt(1.0 - abar) * ctx.randn_like(y)
        factor = self.options.factor
        state.x_prev = x - low_pass(x, factor) + low_pass(y, factor)
