"""ODEdit (seed) and CODE (its successor): invert the observation with deterministic DDIM, then
make it more probable with Langevin updates at chosen latents while the ODE maps it back.

Two stages, usable separately:

* ``ode-inversion`` (``initial_latent``): DDIM (eta 0) from the data up to ``depth`` over a grid,
  optionally after a little noise (CODE: 0.01), optionally with fixed-point corrections that make
  each step the exact inverse of the decoder's step.  Keeps every latent in ``ctx.cache`` and
  reports the reconstruction error.
* ``langevin`` (``update_latent``): K updates ``x <- x + alpha * s(x, t) + sqrt(2 alpha T) z``
  with ``s = -eps / sigma_t`` at chosen latents, before the DDIM step there; the seed's step
  sizes (``alpha_t = eps * sigma_t / sigma_1``, temperature) or the successor's (geometric, 4
  annealing stages, noise-free final steps).  More updates: more realism, less fidelity.

Every ambiguity between the paper, the code and METHODS.md is an option; docs/odedit.md maps
the recipes ``odedit``, ``odedit-light``, ``odedit-heavy`` and ``code`` to them.
"""

from __future__ import annotations

import math

import torch

from guidestack.engine import steps
from guidestack.engine.context import InitialLatent, RunContext, StepState
from guidestack.engine.errors import UsageError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.loop_api import RunResult
from guidestack.engine.registry import Registry
from guidestack.engine.sampler import grid_for, transitions_for
from guidestack.engine.schedule import ddim_timesteps
from guidestack.engine.stage import Stage

from .odedit_options import LangevinOptions, ODEInversionOptions
from .projections import X0Rule, confidence_clip

# --- DDIM transfers ----------------------------------------------------------------------------


def ddim_transfer(
    x: torch.Tensor, eps: torch.Tensor, tr: steps.Transition, rule: X0Rule
) -> torch.Tensor:
    """Deterministic DDIM between two noise levels, either way, for a given ``eps`` (the
    engine's step kernel with eta 0)::

        x0   = rule((x - sqrt(1 - abar_from) eps) / sqrt(abar_from))     (rule(x) at the data)
        eps' = (x - sqrt(abar_from) x0) / sqrt(1 - abar_from)            (eps when rule is none)
        out  = sqrt(abar_to) x0 + sqrt(1 - abar_to) eps'

    Down (``abar_to > abar_from``) it is the sampler's DDIM step with eta 0; up, with ``eps``
    evaluated at the start, it is DDIM inversion.  ``abar = 1`` is the data.
    """
    bounded = rule.mode != "none"
    result = steps.step(
        x, eps, tr, clip=False, x0_rule=rule.apply if bounded else None, rederive=bounded
    )
    return result.x_prev


def decoder_grid(ctx: RunContext, depth: int) -> list[int]:
    """The ORIGINAL timesteps the sampler visits from ``depth`` down (what the loop will do)."""
    if depth in ctx.timesteps:
        return ctx.timesteps[ctx.timesteps.index(depth) :]
    return grid_for(ctx.sampler, ctx.prior.num_train_timesteps, start=depth)


def ddim_invert(
    ctx: RunContext,
    x: torch.Tensor,
    grid: list[int],
    rule: X0Rule,
    *,
    corrections: int = 0,
    clip_eta: float | None = None,
    from_data: bool = True,
) -> dict[int, torch.Tensor]:
    """Invert ``x`` (the data, ``t = -1``) up a descending ``grid``; returns every latent by t.
    With ``from_data = False`` ``x`` is taken as the latent at the grid's lowest point and the
    inversion starts there (the CODE notebook).

    A plain step from ``s`` to ``t`` uses ``eps(x_s, s)`` (``eps(x, t)`` from the data).  Each of
    the ``corrections`` then evaluates the decoder step ``D`` (DDIM from ``t`` down to ``s``) at
    the current ``x_t`` and moves ``x_t += sqrt(abar_t / abar_s) * (x_s - D(x_t))``: the fixed
    point is the exact inverse of the decoder's step (for rule ``none`` one correction equals
    re-inverting with ``eps(x_t, t)``).  ``clip_eta`` confidence-clips each latent first (CODE's
    CBC during encoding).  Every model call goes through ``ctx.denoise``.
    """
    up = [-1, *sorted(grid)] if from_data else sorted(grid)
    latents = {up[0]: x}
    pairs = list(zip(up, up[1:], strict=False))
    abars = {t: ctx.abar(t) for t in up}
    kw = {"dtype": x.dtype, "device": x.device}
    ups = steps.transitions_between(
        [abars[s] for s, _ in pairs], [abars[t] for _, t in pairs], **kw
    )
    downs = (
        steps.transitions_between([abars[t] for _, t in pairs], [abars[s] for s, _ in pairs], **kw)
        if corrections
        else [None] * len(pairs)
    )
    with torch.no_grad():
        for (s, t), tr_up, tr_down in zip(pairs, ups, downs, strict=True):
            a_s, a_t = abars[s], abars[t]
            if clip_eta is not None and s >= 0:
                x = confidence_clip(x, a_s, clip_eta)
            eps = ctx.denoise(x, s if s >= 0 else t).eps.to(x.dtype)
            x_t = ddim_transfer(x, eps, tr_up, rule)
            gain = math.sqrt(a_t / a_s)
            for _ in range(corrections):
                back = ddim_transfer(x_t, ctx.denoise(x_t, t).eps.to(x.dtype), tr_down, rule)
                x_t = x_t + gain * (x - back)
            if clip_eta is not None and t == up[-1]:
                x_t = confidence_clip(x_t, a_t, clip_eta)
            x = x_t
            latents[t] = x
    return latents


def ddim_decode(ctx: RunContext, x: torch.Tensor, grid: list[int], rule: X0Rule) -> torch.Tensor:
    """Deterministic DDIM from ``grid[0]`` down to the data (the sampler with eta 0, its
    ``last_step`` included)."""
    table = transitions_for(
        ctx.prior.alphas_cumprod,
        grid,
        last_step=ctx.sampler.last_step,
        dtype=x.dtype,
        device=x.device,
    )
    with torch.no_grad():
        for t, tr in zip(grid, table, strict=True):
            eps = ctx.denoise(x, t).eps.to(x.dtype)
            x = ddim_transfer(x, eps, tr, rule)
    return x


def per_sample_mae(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [float(v) for v in (a - b).abs().flatten(1).mean(dim=1)]


# --- ode-inversion ---------------------------------------------------------------------------


class ODEInversion(Stage):
    """Starts the reverse process from the observation's own ODE latent instead of noise."""

    name = "ode-inversion"
    description = "ODEdit/CODE initial latent: deterministic DDIM inversion of the observation to a chosen depth."
    Options = ODEInversionOptions

    def rule(self, ctx: RunContext) -> X0Rule:
        if self.options.threshold is not None:
            return self.options.threshold
        return X0Rule(mode="clip" if ctx.sampler.clip_x0 else "none")

    def depth(self, ctx: RunContext) -> int:
        top = ctx.prior.num_train_timesteps - 1
        depth = ctx.timesteps[0] if self.options.depth is None else self.options.depth
        if depth > top:
            raise UsageError(
                f"stage '{self.id}': depth {depth} is above the prior's last timestep {top}"
            )
        return depth

    def inversion_grid(self, ctx: RunContext, depth: int) -> list[int]:
        if self.options.steps is None:
            return decoder_grid(ctx, depth)
        T = ctx.prior.num_train_timesteps
        return ddim_timesteps(self.options.steps, T, start=depth, spacing=ctx.sampler.spacing)

    @hookimpl
    def initial_latent(self, ctx: RunContext) -> InitialLatent:
        opts = self.options
        depth = self.depth(ctx)
        grid = self.inversion_grid(ctx, depth)
        rule = self.rule(ctx)
        y = ctx.observation.image.to(device=ctx.device, dtype=ctx.dtype)
        x = y
        if opts.noise > 0:
            for _ in range(opts.noise_draws):
                x = x + opts.noise * ctx.randn_like(y)
        before = ctx.model_calls
        corrections = opts.iterations if opts.method == "fixed-point" else 0
        latents = ddim_invert(
            ctx,
            x,
            grid,
            rule,
            corrections=corrections,
            clip_eta=opts.clip_eta,
            from_data=opts.start == "data",
        )
        report = {
            "depth": depth,
            "steps": len(grid),
            "method": opts.method,
            "inversion_calls": ctx.model_calls - before,
        }
        if opts.reconstruct:
            before = ctx.model_calls
            decoded = ddim_decode(ctx, latents[depth], decoder_grid(ctx, depth), rule)
            report["reconstruction_calls"] = ctx.model_calls - before
            report["reconstruction_mae"] = per_sample_mae(decoded, x)
        ctx.report[self.id] = report
        if opts.keep_latents:
            ctx.cache[f"{self.id}.latents"] = latents
        self._observation = y
        return InitialLatent(latents[depth], depth)

    @hookimpl
    def finalize(self, ctx: RunContext, result: RunResult) -> None:
        """Report how far the output moved from the observation (fidelity; the round-trip error
        when nothing else changes the latents)."""
        y = getattr(self, "_observation", None)
        if y is not None:
            entry = ctx.report.setdefault(self.id, {})
            entry["output_mae"] = per_sample_mae(result.image.to(y.dtype), y)


# --- langevin ----------------------------------------------------------------------------------


def marginal_sigma(abar: float, kind: str) -> float:
    """``sqrt(1 - abar)`` (the noise std of x_t) or ``sqrt((1 - abar) / abar)`` (DDIM's ODE variable)."""
    var = max(1.0 - abar, 0.0)
    return math.sqrt(var) if kind == "marginal" else math.sqrt(var / abar)


def langevin_updates(
    ctx: RunContext,
    x: torch.Tensor,
    t: int,
    count: int,
    alpha: float,
    *,
    temperature: float = 1.0,
    sigma: str = "marginal",
    rule: X0Rule | None = None,
    clip_eta: float | None = None,
    noise: bool = True,
) -> torch.Tensor:
    """``count`` updates ``x <- x - alpha * eps'(x, t) / sigma_t + sqrt(2 alpha T) z`` at ORIGINAL ``t``.

    ``eps'`` is the model's eps, re-derived from ``rule(x0)`` when a rule bounds x0;
    ``noise=False`` (or ``T = 0``) drops the noise term.  One counted model call per update;
    ``z`` comes from the per-sample generators.
    """
    rule = rule or X0Rule()
    abar = ctx.abar(t)
    tr = steps.transition(abar, dtype=x.dtype, device=x.device)
    sig = marginal_sigma(abar, sigma)
    scale = math.sqrt(2.0 * alpha * temperature) if noise else 0.0
    with torch.no_grad():
        for _ in range(count):
            if clip_eta is not None:
                x = confidence_clip(x, abar, clip_eta)
            eps = ctx.denoise(x, t).eps.to(x.dtype)
            if rule.mode != "none":
                x0 = rule.apply(steps.predict_x0(x, eps, tr, clip=False))
                eps = steps.eps_from_x0(x, x0, tr)
            x = x - (alpha / sig) * eps
            if scale > 0:
                x = x + scale * ctx.randn_like(x)
    return x


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal counts, the first ones larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Langevin(Stage):
    """Score-based updates of chosen latents: each moves the latent towards higher prior density
    at its noise level (plus noise at temperature T), before the ODE continues."""

    name = "langevin"
    description = "ODEdit/CODE latent update: K Langevin steps with score -eps/sqrt(1-abar_t) at chosen latents."
    Options = LangevinOptions

    def setup(self, ctx: RunContext) -> None:
        self._plan_for: tuple[int, ...] | None = None
        self._plan: dict[int, int] = {}
        self._stats: dict[str, list] = {
            "latents": [],
            "updates": [],
            "step_size": [],
            "rms_change": [],
        }
        self._calls = 0

    # --- where, how many, how large ---------------------------------------------------------

    def chosen(self, grid: list[int]) -> list[int]:
        """The visited latents to update, top first (before ``order`` removes the start)."""
        opts = self.options
        if opts.at is not None:
            picked = set()
            for target in opts.at:
                if target > grid[0]:
                    continue  # above the start: that latent is never visited
                picked.add(min(grid, key=lambda g: (abs(g - target), g)))
        else:
            n = opts.every or 1
            last = len(grid) - 1
            picked = {g for i, g in enumerate(grid) if (last - i) % n == 0}
        if opts.order == "after":
            picked.discard(grid[0])
        return [g for g in grid if g in picked]

    def plan(self, ctx: RunContext) -> dict[int, int]:
        """``{t: K}`` for the current loop grid (computed once per grid)."""
        grid = list(ctx.report.get("grid") or ctx.timesteps)
        key = tuple(grid)
        if self._plan_for != key:
            latents = self.chosen(grid)
            if self.options.per == "total" and latents:
                counts = split(self.options.updates, len(latents))
            else:
                counts = [self.options.updates] * len(latents)
            self._plan = dict(zip(latents, counts, strict=True))
            self._plan_for = key
        return self._plan

    def step_size(self, ctx: RunContext, t: int) -> float:
        """alpha at ORIGINAL ``t`` for the first annealing stage."""
        opts = self.options
        if opts.schedule == "constant":
            return opts.step_size
        # the schedule spans the sampler's grid and the visited one (a start may lie above it)
        points = [*ctx.timesteps, *(ctx.report.get("grid") or [])]
        if opts.schedule == "seed":
            ref = marginal_sigma(ctx.abar(min(points)), opts.sigma)  # sigma_1: the first latent
            ratio = marginal_sigma(ctx.abar(t), opts.sigma) / ref
            return opts.step_size * (1.0 / ratio if opts.direction == "shrink" else ratio)
        top = max(points)
        u = t / top if top > 0 else 0.0
        exponent = u if opts.direction == "grow" else 1.0 - u
        return opts.step_size * opts.ratio**exponent

    def stage_counts(self, count: int) -> list[int]:
        """The noisy updates of each annealing stage for ``count`` at a latent."""
        opts = self.options
        if opts.split == "spread":
            return split(count, opts.annealing)
        each = count // opts.annealing
        # the notebook's loop updates only `if steps > 1`: a stage of one update makes none
        return [each if each > 1 else 0] * opts.annealing

    # --- the update -------------------------------------------------------------------------

    def run_at(self, ctx: RunContext, x: torch.Tensor, t: int) -> torch.Tensor:
        opts = self.options
        count = self.plan(ctx).get(t)
        if not count:
            return x
        start, calls = x, ctx.model_calls
        alpha = self.step_size(ctx, t)
        kw = {
            "temperature": opts.temperature,
            "sigma": opts.sigma,
            "rule": opts.threshold,
            "clip_eta": opts.clip_eta,
        }
        free = dict(kw, noise=False)
        if opts.noise_free_eps == "raw":
            free["rule"] = X0Rule(mode="none")
        for j, n in enumerate(self.stage_counts(count)):
            a = alpha * opts.decay**j
            x = langevin_updates(ctx, x, t, n, a, **kw)
            if opts.noise_free == "stage":
                x = langevin_updates(ctx, x, t, 1, a, **free)
            ctx.emit("langevin", id=self.id, t=t, annealing=j, alpha=a, x=x)
        if opts.noise_free == "end":
            a = alpha * opts.decay ** (opts.annealing - 1)
            x = langevin_updates(ctx, x, t, 1, a, **free)
        self._calls += ctx.model_calls - calls
        stats = self._stats
        stats["latents"].append(t)
        stats["updates"].append(count)
        stats["step_size"].append(alpha)
        stats["rms_change"].append([float(v) for v in (x - start).flatten(1).pow(2).mean(1).sqrt()])
        ctx.report[self.id] = {**stats, "model_calls": self._calls}
        return x

    @hookimpl
    def update_latent(self, ctx: RunContext, state: StepState) -> None:
        if self.options.order == "before" and state.repeat == 0:
            state.x_t = self.run_at(ctx, state.x_t, state.t)

    @hookimpl
    def project(self, ctx: RunContext, state: StepState) -> None:
        if self.options.order == "after" and state.t_prev >= 0:
            state.x_prev = self.run_at(ctx, state.x_prev, state.t_prev)


STAGES = (ODEInversion, Langevin)


def contribute(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
