"""DDNM (Wang, Yu & Zhang, ICLR 2023): zero-shot restoration by range-null-space decomposition.

At every step the x0 prediction keeps its null-space part and takes its range-space part from
the measurement::

    x0 <- H^+ y + (I - H^+ H) x0  =  x0 - H^+ (H x0 - y)

so ``H x0 = y`` exactly (for y in H's range) while the prior fills what ``H`` discards; the
sampler then steps from the corrected x0 (DDPM's posterior: the paper's Algorithm 1).  It runs in
``transform_x0``: no extra model call, no backward pass.

DDNM+ (noisy y, ``noise`` of the operator = sigma_y): the correction is scaled and the step's
noise reduced so the noise the correction lets in is not added twice (the paper's Eq. 17-19, its
simplified scalar form, as the official ``simplified_ddnm_plus``)::

    x0 <- x0 - lambda_t H^+ (H x0 - y),   noise std of the step: gamma_t instead of sigma_t
    lambda_t = 1, gamma_t = sqrt(sigma_t^2 - (a_t sigma_y)^2)   if sigma_t >= a_t sigma_y
    lambda_t = sigma_t / (a_t sigma_y), gamma_t = 0             otherwise

with ``a_t`` the coefficient of x0 in the step and ``sigma_t`` its noise: DDPM's posterior mean
coefficient and std; for DDIM, as the official code (which samples with a DDIM variant),
``a_t = sqrt(abar_prev)`` and ``sigma_t = sqrt(1 - abar_prev)``, the whole noise part of
``x_prev`` being rescaled by ``gamma_t / sigma_t``.

Time travel (RePaint's schedule, as the official code): arriving at grid position ``j`` from the
end with ``j`` a multiple of ``travel_length`` (``j < N - travel_length``), the latent jumps
``travel_length`` grid steps back up, re-noised from the last raw x0 prediction
(``sqrt(abar) x0 + sqrt(1 - abar) eps``), and those steps are sampled again, ``travel_repeat - 1``
times per position.  The re-run steps are DDNM steps (one model call each, counted); other
stages' hooks act at the loop's own steps.

In a mix, other stages' guidance moves ``x_prev`` after the projection of x0; the last step's
output is therefore projected once more (with that step's ``lambda``: exactly for noiseless y),
so guidance can only change what ``H`` does not see.

Differences from the official code: its DDIM variant uses the model's raw eps and its own eta
mixing ``sqrt(1 - abar_prev) (eta z + sqrt(1 - eta^2) eps)`` where the engine's DDIM re-derives
eps from the corrected x0; with ``sampler.kind = "ddpm"`` (the recipes) there is no eps to choose.
Its ``simplified`` DDNM+ also takes ``sigma_t = sqrt(1 - abar_prev^2)``, which we read as the
typo of ``sqrt(1 - abar_prev)`` its SVD version uses.
"""

from __future__ import annotations

import math

import torch

from guidestack.engine import steps
from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.loop_api import RunResult
from guidestack.engine.registry import Registry
from guidestack.engine.stage import Stage
from guidestack.plugins.degradations.binding import bind, needs_mask, relative_residual

from .ddnm_options import DDNMOptions


class DDNM(Stage):
    name = "ddnm"
    description = (
        "DDNM: x0 <- H^+ y + (I - H^+ H) x0 at every step (range-null-space decomposition); "
        "DDNM+ for noisy y; time travel."
    )
    Options = DDNMOptions

    @classmethod
    def requires_for(cls, options: DDNMOptions) -> tuple[str, ...]:
        return ("mask",) if needs_mask(options.operator) else ()

    def setup(self, ctx: RunContext) -> None:
        self.operator, self.y = bind(self.options.operator, ctx)
        self.sigma_y = self.operator.noise_level
        self.raw_x0: torch.Tensor | None = None
        self.lam, self.ratio = 1.0, 1.0
        self.travelled = 0
        self.jumps: dict[int, int] = {}
        self._tables: dict[tuple[int, ...], list[steps.Transition]] = {}

    # --- the projection -----------------------------------------------------------------

    def coefficients(self, ctx: RunContext, t: int, t_prev: int) -> tuple[float, float]:
        """``(a_t, sigma_t)``: the weight of x0 in the step to ``t_prev`` and the step's noise
        (module docstring), in float64."""
        a_t, a_p = ctx.abar(t), ctx.abar(t_prev)
        if ctx.sampler.kind == "ddim":
            return math.sqrt(a_p), math.sqrt(max(0.0, 1.0 - a_p))
        if t_prev < 0:
            return 1.0, 0.0
        beta = 1.0 - a_t / a_p
        a = math.sqrt(a_p) * beta / (1.0 - a_t)
        variance = beta if ctx.sampler.variance == "fixed_large" else beta * (1 - a_p) / (1 - a_t)
        return a, math.sqrt(max(0.0, variance))

    def weights(self, ctx: RunContext, t: int, t_prev: int) -> tuple[float, float]:
        """``(lambda_t, gamma_t / sigma_t)`` of Eq. 19 (``(1, 1)`` for noiseless y)."""
        if self.sigma_y == 0:
            return 1.0, 1.0
        a, sigma = self.coefficients(ctx, t, t_prev)
        if sigma >= a * self.sigma_y:
            gamma = math.sqrt(sigma * sigma - (a * self.sigma_y) ** 2)
            return 1.0, (gamma / sigma if sigma > 0 else 1.0)
        return sigma / (a * self.sigma_y), 0.0

    def correct(self, x0: torch.Tensor, lam: float) -> torch.Tensor:
        """``x0 - lam H^+ (H x0 - y)``."""
        if lam == 0:
            return x0
        residual = self.operator(x0) - self.y.to(x0.dtype)
        return x0 - lam * self.operator.pinv(residual).to(x0.dtype)

    @hookimpl
    def transform_x0(self, ctx: RunContext, state: StepState) -> None:
        self.raw_x0 = state.x0.detach()
        if not self.active(state.t):
            self.lam, self.ratio = 0.0, 1.0
            return
        self.lam, self.ratio = self.weights(ctx, state.t, state.t_prev)
        state.x0 = self.correct(state.x0, self.lam)

    @hookimpl
    def project(self, ctx: RunContext, state: StepState) -> None:
        if self.ratio != 1.0:
            state.x_prev = self.reduce_noise(ctx, state, state.x_prev, state.x0, state.noise)
        if state.t_prev < 0 and self.lam > 0:
            # the output itself: other stages' guidance moved it after the projection of x0
            # (a no-op when nothing did, a projection is idempotent)
            state.x_prev = self.correct(state.x_prev, self.lam)
        if self.options.travel_repeat > 1:
            state.x_prev = self.travel(ctx, state.index + 1, state.x_prev)

    def reduce_noise(self, ctx, state, x_prev, x0, noise) -> torch.Tensor:
        """DDNM+: the step's noise scaled by ``gamma_t / sigma_t``."""
        if ctx.sampler.kind == "ddim":
            a = math.sqrt(ctx.abar(state.t_prev))
            return a * x0 + self.ratio * (x_prev - a * x0)
        if noise is None or state.std is None:
            return x_prev
        return x_prev + (self.ratio - 1.0) * state.std * noise

    # --- time travel --------------------------------------------------------------------

    def grid(self, ctx: RunContext) -> list[int]:
        return list(ctx.report.get("grid") or ctx.timesteps)

    def table(self, ctx: RunContext, grid: list[int]) -> list[steps.Transition]:
        key = tuple(grid)
        if key not in self._tables:
            variance = ctx.sampler.variance
            if variance == "auto":
                variance = "learned_range" if ctx.prior.learned_variance else "fixed_small"
            self._tables[key] = steps.transitions(
                ctx.prior.alphas_cumprod,
                grid,
                kind=ctx.sampler.kind,
                eta=ctx.sampler.eta,
                variance=variance,
                dtype=ctx.dtype,
                device=ctx.device,
            )
        return self._tables[key]

    def travel(self, ctx: RunContext, position: int, x: torch.Tensor) -> torch.Tensor:
        """Having arrived at grid ``position``, jump back and resample as RePaint's schedule
        says (module docstring); returns the latent at ``position`` again."""
        grid = self.grid(ctx)
        n, length = len(grid), self.options.travel_length
        while position < n:
            j = n - 1 - position  # time index counted from the data, as the official schedule
            if j % length or j >= n - length:
                break
            done = self.jumps.get(j, 0)
            if done >= self.options.travel_repeat - 1:
                break
            self.jumps[j] = done + 1
            start = position - length
            abar = ctx.abar(grid[start])
            noise = ctx.randn_like(x)
            x = math.sqrt(abar) * self.raw_x0.to(x.dtype) + math.sqrt(1.0 - abar) * noise
            table = self.table(ctx, grid)
            for index in range(start, position):
                t_prev = grid[index + 1] if index + 1 < n else -1
                x = self.resample(ctx, x, grid[index], t_prev, table[index])
        return x

    def resample(self, ctx, x, t, t_prev, tr) -> torch.Tensor:
        """One DDNM step of a travelled stretch (one counted model call)."""
        output = ctx.denoise(x, t)
        eps = output.eps.to(ctx.dtype)
        raw = steps.predict_x0(x, eps, tr, clip=ctx.sampler.clip_x0)
        self.raw_x0 = raw
        lam, ratio = self.weights(ctx, t, t_prev) if self.active(t) else (0.0, 1.0)
        x0 = self.correct(raw, lam)
        direction = steps.eps_from_x0(x, x0, tr) if tr.kind == "ddim" else None
        values = output.variance_values
        mean, std, _ = steps.moments(
            tr, x, x0, direction, None if values is None else values.to(ctx.dtype)
        )
        noise = ctx.randn_like(x) if tr.noisy else None
        x_prev = steps.add_noise(mean, std, noise, tr)
        self.travelled += 1
        if ratio != 1.0:
            if tr.kind == "ddim":
                a = math.sqrt(ctx.abar(t_prev))
                x_prev = a * x0 + ratio * (x_prev - a * x0)
            elif noise is not None:
                x_prev = x_prev + (ratio - 1.0) * std * noise
        return x_prev

    @hookimpl
    def finalize(self, ctx: RunContext, result: RunResult) -> None:
        ctx.report[self.id] = {
            "operator": self.operator.describe(),
            "sigma_y": self.sigma_y,
            "travelled_steps": self.travelled,
            "consistency": [
                float(f"{v:.6g}") for v in relative_residual(self.operator, result.image, self.y)
            ],
        }


STAGES = (DDNM,)


def contribute(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
