"""DPS (Chung et al., ICLR 2023): diffusion posterior sampling with the manifold-constrained
gradient.  Each step of the sampler (DDPM in the paper) is followed by::

    x_prev = x'_prev - zeta * grad_{x_t} ||y - H(x0(x_t))||        (per sample)

where ``x0(x_t)`` is the (clipped) prediction through the denoiser at ``x_t``, so the gradient
needs one backward pass through the network per step.  The ``dps`` stage is the measurement
term; the engine supplies the rest: ``[guidance] target = "xt"`` (the gradient through the
denoiser), ``rule = "gradient"`` (``x' - s g``) and ``scale = zeta``.  The stage checks that
its recipe says so (``paper_update = false`` lets its loss join other rules and targets).

Step size: the official code multiplies the gradient of the norm ``||r||`` by ``scale`` (0.3
for super-resolution and deblurring, 0.5 for inpainting, FFHQ configs); the paper writes
``zeta_i = zeta' / ||y - H(x0)||`` on the squared norm, ``zeta' grad ||r||^2 / ||r|| = 2 zeta'
grad ||r||``, the same step with ``zeta = 2 zeta'``.  The official code takes one norm over the
whole batch; here every sample has its own (a batch equals single runs).

Noisy y: DPS never projects y; its noise model only changes the data term.  ``gaussian``: the
norm ``||r||``; ``poisson``: the official code's ``mean(||r|| / |y|)``, i.e. ``||r||`` weighted
by the mean inverse magnitude of the measurement (|y| floored at ``1e-3``).
"""

from __future__ import annotations

import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.errors import RecipeError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.loop_api import RunResult
from guidestack.engine.registry import Registry
from guidestack.engine.stage import Stage
from guidestack.plugins.degradations.binding import bind, needs_mask, relative_residual

from .dps_options import DPSOptions

#: |y| floor of the Poisson weighting (the official code divides by |y| unguarded)
POISSON_FLOOR = 1e-3


class DPS(Stage):
    name = "dps"
    description = (
        "DPS: x_prev = x' - zeta * grad_{x_t} ||y - H(x0(x_t))|| per sample, through the "
        'denoiser ([guidance] target = "xt", rule = "gradient", scale = zeta).'
    )
    Options = DPSOptions

    @classmethod
    def requires_for(cls, options: DPSOptions) -> tuple[str, ...]:
        return ("mask",) if needs_mask(options.operator) else ()

    def setup(self, ctx: RunContext) -> None:
        g = ctx.guidance
        if self.options.paper_update and (g.target != "xt" or g.rule != "gradient"):
            raise RecipeError(
                f"stage '{self.id}'",
                [
                    (
                        "guidance",
                        f'DPS steps with [guidance] target = "xt" and rule = "gradient" (scale = '
                        f"zeta); this recipe has target = {g.target!r}, rule = {g.rule!r}. Set "
                        "them, or paper_update = false to use the DPS loss under this rule",
                    )
                ],
            )
        self.operator, self.y = bind(self.options.operator, ctx)
        if self.options.noise_model == "poisson":
            inverse = 1.0 / self.y.abs().clamp_min(POISSON_FLOOR)
            self.weight_y = inverse.flatten(1).mean(dim=1)
        self.last: torch.Tensor | None = None

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        residual = (self.y - self.operator(state.x0)).flatten(1)
        loss = residual.norm(dim=1)
        if self.options.noise_model == "poisson":
            loss = loss * self.weight_y.to(loss.dtype)
        self.last = loss.detach()
        return loss

    @hookimpl
    def finalize(self, ctx: RunContext, result: RunResult) -> None:
        info = {
            "operator": self.operator.describe(),
            "noise_model": self.options.noise_model,
            "consistency": [
                float(f"{v:.6g}") for v in relative_residual(self.operator, result.image, self.y)
            ],
        }
        if self.last is not None:
            info["loss_last_step"] = [float(f"{v:.6g}") for v in self.last.tolist()]
        ctx.report[self.id] = info


STAGES = (DPS,)


def contribute(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
