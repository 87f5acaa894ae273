"""The one sampler loop.  Every method in the project is a set of stages hooked into it.

Per grid step ``t -> t_prev`` (and per repeat inside the repeat window)::

    update_latent(ctx, state)           # Langevin, annealing...       (stages, recipe order)
    eps = prior(x_t, t); x0 = ...       # one counted model call
    transform_x0(ctx, state)            # dynamic thresholding...      (stages, recipe order)
    guidance_loss(ctx, state) -> L_i    # on a detached x0; g = d sum_i w_i L_i / d x0
                                        # (guidance.target = "xt": the model call, x0 and the
                                        # losses keep their graph and g = d sum w_i L_i / d x_t)
    [rule x0]  x0 -= s * g
    mean, std  = DDPM posterior | DDIM  # the step kernel (steps.py), coefficients once per run
    x' = mean + std * z                 # z from one generator per sample
    [mean_shift] x_prev = mean - s * Sigma * g + std * z
    [dynamic]    x_prev = x' - s * ||x_t - x'|| / ||g|| * g
    [gradient]   x_prev = x' - s * g
    project(ctx, state)                 # paste-back, clipping...

Before the loop ``initial_latent`` chooses where to start; around it ``optimise`` may wrap the
whole loop (SHRED); after it ``finalize`` has the last word.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import schedule as schedules
from . import steps
from .config import SamplerConfig
from .context import InitialLatent, RunContext, StepState
from .errors import GuidestackError, NonFiniteError, StageError
from .guidance import GraphMemory, all_finite, dynamic_update, loss_gradient, mean_shift
from .loop_api import RunResult
from .prior import PriorOutput
from .stageset import StageSet


def grid_for(
    sampler: SamplerConfig, num_train_timesteps: int, start: int | None = None
) -> list[int]:
    """The ORIGINAL timesteps a sampler configuration visits, from ``start`` (default: the
    configured start, else the top of the schedule) down to the last grid point.

    DDIM uses diffusers' spacings; DDPM uses guided-diffusion's respacing (PGDiff, DifFace):
    section counts ``"N"`` or, with ``respacing = "stride"``, ``"ddimN"`` (PGDiff's README's
    ``ddpmN``).  The first model call is at exactly ``start``.
    """
    start = sampler.start if start is None else start
    if sampler.kind == "ddim":
        return schedules.ddim_timesteps(
            sampler.steps, num_train_timesteps, start=start, spacing=sampler.spacing
        )
    counts = f"ddim{sampler.steps}" if sampler.respacing == "stride" else sampler.steps
    grid = schedules.respaced_timesteps(counts, num_train_timesteps)
    if start is None:
        return grid
    below = [t for t in grid if t < start]
    return [start, *below]


def transitions_for(
    alphas_cumprod: torch.Tensor, grid: list[int], *, last_step: str = "data", **kw: Any
) -> list[steps.Transition]:
    """The kernel's step table of ``grid`` (``kw``: :func:`steps.transitions`' options), whose
    last step goes to the data, or with ``last_step = "above"`` (``sampler.last_step``) back up
    to the grid point above the last one (the CODE notebook's final step)."""
    table = steps.transitions(alphas_cumprod, grid, **kw)
    if last_step == "above" and len(grid) > 1:
        abar = alphas_cumprod.detach().to("cpu", torch.float64)
        table[-1] = steps.transition(float(abar[grid[-1]]), float(abar[grid[-2]]), **kw)
    return table


class Loop:
    """The reverse process of one run; also the :class:`LoopHandle` given to ``optimise``."""

    def __init__(self, ctx: RunContext, stages: StageSet):
        self.ctx = ctx
        self.stages = stages
        self.grid: list[int] = list(ctx.timesteps)
        self._tables: dict[tuple[int, ...], list[steps.Transition]] = {}
        # which per-step hooks have implementers, looked up once (the loop skips the others)
        self._update = stages.has("update_latent")
        self._transform = stages.has("transform_x0")
        self._project = stages.has("project")
        self._guided = stages.has("guidance_loss")

    # --- LoopHandle ---------------------------------------------------------------------

    def sample(self, initial: InitialLatent | None = None) -> torch.Tensor:
        """Run from ``initial`` (default: ``initial_latent`` hooks, else noise) to x0."""
        ctx = self.ctx
        if initial is None:
            initial = self.stages.first("initial_latent", ctx=ctx)
        if initial is None:
            top = ctx.timesteps[0]
            initial = InitialLatent(ctx.randn(), top)
        grid = self.grid = self.grid_from(initial.t)
        table = self.table(grid)
        ctx.report.setdefault("start_t", initial.t)
        ctx.report["grid"] = grid
        x = initial.x.to(device=ctx.device, dtype=ctx.dtype)
        ctx.emit("start", total=len(grid), t=initial.t)
        emit = ctx.callback is not None
        renoise = ctx.guidance.renoise
        total = len(grid)
        for index, t in enumerate(grid):
            tr = table[index]
            t_prev = grid[index + 1] if index + 1 < total else -1
            repeats = self._repeats(t)
            for repeat in range(repeats):
                state = StepState(t=t, t_prev=t_prev, index=index, x_t=x, repeat=repeat)
                x = self.step(state, tr)
                if repeat + 1 < repeats and renoise:
                    x = self._renoise(x, tr)
            if emit:
                ctx.emit("step", index=index, total=total, t=t, state=state)
        return x

    def guidance_loss(self, x0: torch.Tensor, t: int) -> torch.Tensor | None:
        """Weighted sum of the stages' guidance losses on ``x0`` at ``t``, graph kept."""
        state = StepState(t=t, t_prev=-1, index=-1, x_t=x0, x0=x0)
        return self._total_loss(state)

    # --- internals ----------------------------------------------------------------------

    def grid_from(self, t_start: int) -> list[int]:
        """The visited ORIGINAL timesteps from ``t_start`` down; keeps the recipe's spacing."""
        grid = self.ctx.timesteps
        if t_start in grid:
            return grid[grid.index(t_start) :]
        return grid_for(self.ctx.sampler, self.ctx.prior.num_train_timesteps, start=t_start)

    def variance_kind(self) -> str:
        """The DDPM variance this run uses (``auto`` resolved against the prior)."""
        kind = self.ctx.sampler.variance
        if kind == "auto":
            return "learned_range" if self.ctx.prior.learned_variance else "fixed_small"
        return kind

    def table(self, grid: list[int]) -> list[steps.Transition]:
        """The step coefficients of ``grid``: float64 once, cast once to the run's dtype/device."""
        key = tuple(grid)
        found = self._tables.get(key)
        if found is None:
            ctx = self.ctx
            cfg = ctx.sampler
            found = self._tables[key] = transitions_for(
                ctx.prior.alphas_cumprod,
                grid,
                last_step=cfg.last_step,
                kind=cfg.kind,
                eta=cfg.eta,
                variance=self.variance_kind(),
                dtype=ctx.dtype,
                device=ctx.device,
            )
        return found

    def _repeats(self, t: int) -> int:
        g = self.ctx.guidance
        if g.repeats > 1 and self._guided and schedules.window_contains(g.repeat_window, t):
            return g.repeats
        return 1

    def _renoise(self, x_prev: torch.Tensor, tr: steps.Transition) -> torch.Tensor:
        """Sample q(x_t | x_prev): go back up one grid step so the next repeat redoes ``t``."""
        ratio = tr.abar_t / tr.abar_prev
        return math.sqrt(ratio) * x_prev + math.sqrt(1.0 - ratio) * self.ctx.randn_like(x_prev)

    def _total_loss(self, state: StepState) -> torch.Tensor | None:
        total = None
        for stage, loss in self.stages.call(
            "guidance_loss",
            ctx=self.ctx,
            state=state,
            step=state.index,
            t=state.t,
            where=lambda s: s.active(state.t),
        ):
            if loss is None:
                continue
            if loss.dim() != 1 or loss.shape[0] != state.x0.shape[0]:
                shape = tuple(loss.shape)
                raise StageError(
                    stage.id,
                    "guidance_loss",
                    state.index,
                    state.t,
                    ValueError(
                        f"returned shape {shape}; losses must be per sample, [{state.x0.shape[0]}]"
                    ),
                )
            state.losses[stage.id] = loss.detach()
            weighted = stage.weight * loss
            total = weighted if total is None else total + weighted
        return total

    def _guides(self, t: int) -> bool:
        g = self.ctx.guidance
        return self._guided and g.scale != 0 and schedules.window_contains(g.window, t)

    def _guidance_gradient(self, state: StepState) -> torch.Tensor | None:
        if not self._guides(state.t):
            return None
        x0 = state.x0
        state.x0 = x0.detach().requires_grad_(True)
        memory = GraphMemory()
        try:
            with torch.enable_grad(), memory:
                total = self._total_loss(state)
                grad = None if total is None else loss_gradient(total, state.x0)
        finally:
            state.x0 = x0
        if grad is not None:
            self._record(memory, through_denoiser=False)
        return grad

    def _predict(self, state: StepState, tr: steps.Transition) -> None:
        """The model call at ``state.t``, x0 and ``transform_x0`` (no graph)."""
        ctx = self.ctx
        if torch.is_grad_enabled():
            with torch.no_grad():
                state.output = ctx.denoise(state.x_t, state.t)
        else:
            state.output = ctx.denoise(state.x_t, state.t)
        state.eps = state.output.eps.to(ctx.dtype)
        state.x0 = steps.predict_x0(state.x_t, state.eps, tr, clip=ctx.sampler.clip_x0)
        self._transform_x0(state)

    def _transform_x0(self, state: StepState) -> None:
        if self._transform:
            ctx = self.ctx
            for _ in self.stages.call(
                "transform_x0", ctx=ctx, state=state, step=state.index, t=state.t
            ):
                pass

    def _predict_with_gradient(self, state: StepState, tr: steps.Transition) -> torch.Tensor | None:
        """``guidance.target = "xt"``: the model call, x0, ``transform_x0`` and the losses keep
        their graph; returns ``g = d sum_i w_i L_i / d x_t`` (one backward pass through the
        denoiser) and leaves the state's tensors detached, as the x0 target does."""
        ctx = self.ctx
        x_t = state.x_t
        leaf = x_t.detach().requires_grad_(True)
        memory = GraphMemory()
        grad = None
        try:
            with torch.enable_grad(), memory:
                state.x_t = leaf
                output = ctx.denoise(leaf, state.t)
                state.eps = output.eps.to(ctx.dtype)
                state.x0 = steps.predict_x0(leaf, state.eps, tr, clip=ctx.sampler.clip_x0)
                self._transform_x0(state)
                total = self._total_loss(state)
                if total is not None:
                    grad = loss_gradient(total, leaf)
        finally:
            state.x_t = x_t
        values = output.variance_values
        state.output = PriorOutput(
            eps=output.eps.detach(), variance_values=None if values is None else values.detach()
        )
        state.eps = state.eps.detach()
        state.x0 = state.x0.detach()
        if grad is not None:
            self._record(memory, through_denoiser=True)
        return grad

    def _record(self, memory: GraphMemory, through_denoiser: bool) -> None:
        """Guidance costs for run.json: gradients taken, backward passes through the denoiser,
        and the largest autograd graph a gradient needed (bytes of tensors saved for it)."""
        facts = self.ctx.report.setdefault(
            "guidance",
            {
                "target": self.ctx.guidance.target,
                "gradients": 0,
                "backward_through_denoiser": 0,
                "graph_bytes_max": 0,
            },
        )
        facts["gradients"] += 1
        facts["backward_through_denoiser"] += int(through_denoiser)
        facts["graph_bytes_max"] = max(facts["graph_bytes_max"], memory.peak)

    def step(self, state: StepState, tr: steps.Transition | None = None) -> torch.Tensor:
        """One reverse step from ``state.x_t`` (coefficients ``tr``, default: from the run's
        grid); returns ``x_prev`` after projections."""
        ctx = self.ctx
        stages = self.stages
        if tr is None:
            tr = self.table(self.grid)[state.index]
        if self._update:
            for _ in stages.call(
                "update_latent", ctx=ctx, state=state, step=state.index, t=state.t
            ):
                pass
        if ctx.guidance.target == "xt" and self._guides(state.t):
            grad = self._predict_with_gradient(state, tr)
        else:
            self._predict(state, tr)
            grad = self._guidance_gradient(state) if self._guided else None
        state.grad = grad
        rule = ctx.guidance.rule
        if grad is not None and rule == "x0":
            state.x0 = state.x0 - ctx.guidance.scale * grad

        values = None
        if tr.variance is None:  # learned variance
            values = state.output.variance_values
            if values is None:
                raise NonFiniteError("variance 'learned_range' needs a prior with learned variance")
            values = values.to(ctx.dtype)
        # DDIM re-derives its direction from the (clipped, transformed, guided) x0, or keeps the
        # model's raw eps (sampler.eps = "raw")
        direction = None
        if tr.kind == "ddim":
            rederive = ctx.sampler.eps == "rederived"
            direction = steps.eps_from_x0(state.x_t, state.x0, tr) if rederive else state.eps
        state.mean, state.std, state.variance = steps.moments(
            tr, state.x_t, state.x0, direction, values
        )
        if tr.noisy:  # z from one generator per sample
            state.noise = ctx.randn_like(state.x_t)
        x_prime = steps.add_noise(state.mean, state.std, state.noise, tr)
        if grad is None or rule == "x0":
            state.x_prev = x_prime
        elif rule == "mean_shift":
            noise_part = x_prime - state.mean
            shifted = mean_shift(state.mean, state.variance, grad, ctx.guidance.scale)
            state.x_prev = shifted + noise_part
        elif rule == "gradient":
            state.x_prev = x_prime - ctx.guidance.scale * grad
        else:
            state.x_prev = dynamic_update(
                state.x_t, x_prime, grad, ctx.guidance.scale, per_channel=rule == "dynamic_channel"
            )
        if self._project:
            for _ in stages.call("project", ctx=ctx, state=state, step=state.index, t=state.t):
                pass
        if not all_finite(state.x_prev):
            raise NonFiniteError(
                f"the latent became NaN or infinite at step {state.index} (t={state.t})"
            )
        return state.x_prev


def run_stages(ctx: RunContext, stages: StageSet) -> RunResult:
    """Set up the stages, run ``optimise`` or the loop, then ``finalize``."""
    for stage in stages.stages:
        try:
            stage.setup(ctx)
        except Exception as exc:
            if isinstance(exc, GuidestackError):
                raise
            raise StageError(stage.id, "setup", None, None, exc) from exc
    loop = Loop(ctx, stages)
    image = stages.first("optimise", ctx=ctx, loop=loop)
    if image is None:
        image = loop.sample()
    result = RunResult(image=image.clamp(-1.0, 1.0))
    for _ in stages.call("finalize", ctx=ctx, result=result):
        pass
    return result
