"""Projections any recipe can use: dynamic thresholding of x0 and confidence clipping of x_t.

Both come from CODE (the ODEdit successor) but know nothing about it: they bound what the
sampler sees, so a recipe can add them to PGDiff, DifFace or SHRED runs too.

* dynamic thresholding (Imagen; CODE uses quantile 0.98, max 1.3): per sample, ``s`` = the
  ``quantile`` of ``|x0|`` clamped to ``[1, max]``; ``x0 <- clamp(x0, -s, s) / s``.  With ``s = 1``
  this is ordinary clipping; above, saturated pixels are pulled in instead of flattened.
* confidence clipping (CODE's CBC): a latent ``x_t = sqrt(abar) x0 + sqrt(1-abar) eps`` with
  ``x0`` in [-1, 1] lies within ``+-(sqrt(abar_t) + eta * sqrt(1-abar_t))`` unless its noise is an
  outlier beyond ``eta`` standard deviations; pixels outside are corruption, not noise, and are
  clipped (CODE: eta = 1.7).

The functions are used by the stages below and by the ODEdit stages for the model calls they
make themselves (inversion, Langevin).
"""

from __future__ import annotations

import math

import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.registry import Registry
from guidestack.engine.schedule import window_contains
from guidestack.engine.stage import Stage

from .odedit_options import ConfidenceClippingOptions, DynamicThresholdingOptions
from .odedit_options import X0Rule as X0Rule  # re-exported: ODEdit imports it from here


def dynamic_threshold(
    x0: torch.Tensor, quantile: float = 0.98, max_value: float = 1.3
) -> torch.Tensor:
    """Imagen's dynamic thresholding, per sample: ``clamp(x0, -s, s) / s`` with ``s`` the
    ``quantile`` of ``|x0|`` over all of the sample's values, clamped to ``[1, max_value]``."""
    n = x0.shape[0]
    flat = x0.reshape(n, -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(work.abs(), quantile, dim=1).clamp(1.0, max_value).to(x0.dtype)
    s = s.view(n, *([1] * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def confidence_bound(abar: float, eta: float) -> float:
    """``sqrt(abar) + eta * sqrt(1 - abar)``: where a latent of an image in [-1, 1] may lie."""
    return math.sqrt(abar) + eta * math.sqrt(max(1.0 - abar, 0.0))


def confidence_clip(x: torch.Tensor, abar: float, eta: float) -> torch.Tensor:
    """Clamp a latent at noise level ``abar`` to ``+-confidence_bound(abar, eta)`` (CODE's CBC)."""
    bound = confidence_bound(abar, eta)
    return x.clamp(-bound, bound)


class DynamicThresholding(Stage):
    """Bounds x0 before guidance and the step rule (the ``transform_x0`` hook).  The sampler's
    ``clip_x0`` runs first and would make this a no-op: recipes set ``clip_x0 = false``."""

    name = "dynamic-thresholding"
    description = "Dynamic thresholding of the x0 prediction (quantile of |x0|, clamped to [1, max]) before each step."
    Options = DynamicThresholdingOptions

    def setup(self, ctx: RunContext) -> None:
        if ctx.sampler.clip_x0:
            notes = ctx.report.setdefault("notes", [])
            notes.append(
                f"stage '{self.id}': sampler.clip_x0 is true, so x0 is already in [-1, 1] and "
                "dynamic thresholding only clips; set sampler.clip_x0 = false"
            )

    @hookimpl
    def transform_x0(self, ctx: RunContext, state: StepState) -> None:
        if window_contains(self.options.window, state.t):
            state.x0 = dynamic_threshold(state.x0, self.options.quantile, self.options.max)


class ConfidenceClipping(Stage):
    """Clips latents to where a clean image's latent can be, so corrupted pixels the model does
    not trust stop steering the denoiser (CODE's confidence-based clipping)."""

    name = "confidence-clipping"
    description = "Clip latents x_t to +-(sqrt(abar_t) + eta*sqrt(1-abar_t)) (CODE's confidence-based clipping)."
    Options = ConfidenceClippingOptions

    def _clip(self, ctx: RunContext, x: torch.Tensor, t: int) -> torch.Tensor:
        if not window_contains(self.options.window, t):
            return x
        return confidence_clip(x, ctx.abar(t), self.options.eta)

    @hookimpl
    def update_latent(self, ctx: RunContext, state: StepState) -> None:
        if self.options.apply_to == "x_t":
            state.x_t = self._clip(ctx, state.x_t, state.t)

    @hookimpl
    def project(self, ctx: RunContext, state: StepState) -> None:
        if self.options.apply_to == "x_prev":
            state.x_prev = self._clip(ctx, state.x_prev, state.t_prev)


STAGES = (DynamicThresholding, ConfidenceClipping)


def contribute(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
