"""SHRED: restore by optimising the initial noise x_T of a deterministic DDIM with large jumps.

The image is ``x0 = f(x_T)``: DDIM with eta 0 from the top of the schedule in jumps of
``delta`` timesteps (10 model calls for T = 1000, delta = 100), x0 clipped at each jump.  Adam
minimises, per sample, ``data_weight * ||y - H(f(x_T))|| + (other stages' guidance losses on
f(x_T))`` over x_T (and over H's own parameters in blind mode), with y in H's own space (a 16x16
photo for 4x super-resolution, as the public API keeps it).

Two gradient modes:

* ``straight-through`` (the successor code, BIRD): the denoiser runs without gradient; the
  gradient reaches x_T only through the DDIM linear combinations.  Memory of one forward pass.
* ``full`` (the paper's formulation): backpropagation through every denoiser call, with
  gradient checkpointing per jump (``checkpoint = true``) so only the jump inputs are stored and
  one denoiser call is recomputed at a time during the backward pass (counted as model calls).

After each Adam step x_T is rescaled to the sphere of radius ``sqrt(C*H*W)`` (per sample), where
Gaussian noise concentrates; so is the initial draw unless ``project_initial = false`` (BIRD's
code starts from the raw draw).  Every sample has its own loss, sphere and early stop (a finished
sample is frozen), and Adam is elementwise, so a batch gives the same result as single runs: up to
float rounding by default (batched reductions), bit for bit in ``deterministic`` runs (one sample
at a time).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from guidestack.engine import steps
from guidestack.engine.context import RunContext
from guidestack.engine.errors import NonFiniteError, RecipeError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.loop_api import LoopHandle
from guidestack.engine.registry import Registry
from guidestack.engine.schedule import ddim_timesteps, jump_timesteps
from guidestack.engine.stage import Stage

from .shred_options import ShredOptions

#: at most this many points of each sample's loss curve go into run.json
CURVE_POINTS = 25


def _registry() -> Registry:
    from guidestack.engine.registry import default_registry

    return default_registry()


def _reduce(r: torch.Tensor, norm: str) -> torch.Tensor:
    """The data term over the last dimension of flattened residuals (``[N, D] -> [N]``)."""
    if norm == "mse":
        return r.pow(2).mean(dim=-1)
    if norm == "sse":
        return r.pow(2).sum(dim=-1)
    if norm == "l2":
        return r.pow(2).sum(dim=-1).clamp_min(1e-20).sqrt()
    return r.abs().mean(dim=-1)


def _per_sample(values: torch.Tensor, norm: str, deterministic: bool = True) -> torch.Tensor:
    """Reduce a residual ``[N, ...]`` to ``[N]``: batched, or one sample at a time in
    ``deterministic`` runs (batch-independent bits)."""
    if not deterministic:
        return _reduce(values.reshape(values.shape[0], -1), norm)
    return torch.stack([_reduce(row.reshape(-1), norm) for row in values])


class Shred(Stage):
    name = "shred"
    description = (
        "SHRED: optimise the initial noise x_T of a jump-DDIM so H(x0) matches the observation "
        "(super-resolution, inpainting, deblurring, blind deblurring, any guidance loss)."
    )
    Options = ShredOptions

    @classmethod
    def requires_for(cls, options: ShredOptions) -> tuple[str, ...]:
        """A masking operator that reads the observation's mask needs ``--mask``."""
        ref = options.operator
        if ref is None:
            return ()
        entry = _registry().get("degradation", ref.use)
        if entry is None:
            return ()
        needs = entry.obj.needs_mask(entry.options.model_validate(ref.options_dict()))
        return ("mask",) if needs else ()

    def setup(self, ctx: RunContext) -> None:
        self.operator = None
        self.target = None
        ref = self.options.operator
        if ref is not None:
            self.operator = ref.build(ctx.registry).to(ctx.device)
            self.operator.prepare(ctx.observation)
            with torch.no_grad():
                self.target = self.operator.observed(ctx.observation).detach()

    # --- x0 = f(x_T) ------------------------------------------------------------------------

    def grid(self, ctx: RunContext) -> list[int]:
        T = ctx.prior.num_train_timesteps
        delta = min(self.options.delta, T)
        if self.options.grid == "leading":
            return ddim_timesteps(max(1, T // delta), T, spacing="leading")
        return jump_timesteps(delta, T)

    def table(self, ctx: RunContext, grid: list[int]) -> list[steps.Transition]:
        """The jumps' DDIM coefficients, computed once per grid (not once per jump and iteration)."""
        key = (tuple(grid), ctx.dtype, str(ctx.device))
        cached = getattr(self, "_table", None)
        if cached is None or cached[0] != key:
            table = steps.transitions(
                ctx.prior.alphas_cumprod, grid, dtype=ctx.dtype, device=ctx.device
            )
            self._table = cached = (key, table)
        return cached[1]

    def render(self, ctx: RunContext, x_T: torch.Tensor, grid: list[int]) -> torch.Tensor:
        """Deterministic DDIM from ``x_T`` over ``grid``; differentiable in ``x_T``."""
        mode = self.options.gradient
        x = x_T
        for t, tr in zip(grid, self.table(ctx, grid), strict=True):
            if mode == "straight-through":
                with torch.no_grad():
                    eps = ctx.denoise(x.detach(), t).eps
            elif self.options.checkpoint:
                eps = checkpoint(_eps, ctx, x, t, use_reentrant=False)
            else:
                eps = _eps(ctx, x, t)
            result = steps.step(x, eps.to(x.dtype), tr, clip=self.options.clip_x0)
            x = result.x0 if tr.final else result.x_prev
        return x

    # --- objective ---------------------------------------------------------------------------

    def losses(
        self, ctx: RunContext, loop: LoopHandle, x0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(total [N], data term [N] or None)`` for the images ``x0`` (graph kept)."""
        total = None
        data = None
        if self.operator is not None:
            residual = self.operator(x0) - self.target
            data = _per_sample(residual, self.options.norm, ctx.deterministic)
            total = self.options.data_weight * data
        other = loop.guidance_loss(x0, self.options.guidance_t)
        if other is not None:
            total = other if total is None else total + other
        if total is None:
            raise RecipeError(
                f"stage '{self.id}'",
                [("operator", "shred needs an operator H or another stage with a guidance loss")],
            )
        return total, data

    # --- the optimisation ----------------------------------------------------------------------

    @hookimpl
    def optimise(self, ctx: RunContext, loop: LoopHandle) -> torch.Tensor:
        o = self.options
        grid = self.grid(ctx)
        ctx.report["grid"] = grid
        ctx.report["start_t"] = grid[0]
        n = ctx.batch_size
        radius = math.sqrt(math.prod(ctx.shape[1:]))
        latent = torch.nn.Parameter(ctx.randn())
        if o.sphere and o.project_initial:
            _to_sphere(latent, radius, torch.ones(n, dtype=torch.bool), ctx.deterministic)
        groups: list[dict[str, Any]] = [{"params": [latent], "lr": o.lr}]
        blind = [
            p for p in (self.operator.parameters() if self.operator else []) if p.requires_grad
        ]
        for p in blind:
            if p.dim() == 0 or p.shape[0] != n:
                raise RecipeError(
                    f"stage '{self.id}'",
                    [
                        (
                            "operator",
                            f"blind operator '{self.operator.name}' must hold one parameter set per sample",
                        )
                    ],
                )
        if blind:
            lr = o.operator_lr or self.operator.suggested_lr or 2e-4
            groups.append({"params": blind, "lr": lr})
        optimizer = torch.optim.Adam(groups)
        params = [latent, *blind]

        active = torch.ones(n, dtype=torch.bool)
        result = torch.zeros(ctx.shape, device=ctx.device, dtype=ctx.dtype)
        curves: list[list[float]] = [[] for _ in range(n)]
        data_curves: list[list[float]] = [[] for _ in range(n)]
        stopped = [None] * n
        ctx.emit("start", total=o.iterations)
        for k in range(o.iterations):
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                x0 = self.render(ctx, latent, grid)
                total, data = self.losses(ctx, loop, x0)
            if not torch.isfinite(total.detach()).all():
                raise NonFiniteError(f"SHRED's loss became NaN or infinite at iteration {k}")
            values = total.detach().cpu()
            running = active.clone()
            value_list = values.tolist()
            data_list = data.detach().cpu().tolist() if data is not None else None
            for i, live_i in enumerate(running.tolist()):
                if live_i:
                    curves[i].append(value_list[i])
                    if data_list is not None:
                        data_curves[i].append(data_list[i])
            if bool(running.all()):
                result.copy_(x0.detach())
            else:
                result[running.to(result.device)] = x0.detach()[running.to(x0.device)]
            if o.stop_below is not None:
                finished = running & (values < o.stop_below)
                for i in torch.nonzero(finished).flatten().tolist():
                    stopped[i] = k + 1
                active &= ~finished
            live = values[running]
            if ctx.callback is not None:  # x_T is updated in place: the callback gets a copy
                ctx.emit(
                    "iteration",
                    index=k,
                    total=o.iterations,
                    postfix={"loss": f"{float(live.mean()):.4g}", "it": k + 1},
                    x_T=latent.detach().clone(),
                    x0=x0.detach(),
                )
            if k + 1 == o.iterations or not bool(active.any()):
                break
            (total * active.to(total.device, total.dtype)).sum().backward()
            if bool(active.all()):
                optimizer.step()
            else:  # finished samples keep their latent (and operator parameters)
                frozen = [p.detach()[~active.to(p.device)].clone() for p in params]
                optimizer.step()
                with torch.no_grad():
                    for p, keep in zip(params, frozen, strict=True):
                        p[~active.to(p.device)] = keep
            if o.sphere:
                _to_sphere(latent, radius, active, ctx.deterministic)
        self._report(ctx, curves, data_curves, stopped)
        return result

    def _report(self, ctx: RunContext, curves, data_curves, stopped) -> None:
        def thin(curve: list[float]) -> list[float]:
            step = max(1, math.ceil(len(curve) / CURVE_POINTS))
            points = curve[::step]
            if curve and (len(curve) - 1) % step:
                points.append(curve[-1])
            return [float(f"{v:.6g}") for v in points]

        info: dict[str, Any] = {
            "gradient": self.options.gradient,
            "iterations": [len(c) for c in curves],
            "loss_first": [float(f"{c[0]:.6g}") for c in curves],
            "loss_last": [float(f"{c[-1]:.6g}") for c in curves],
            "loss_min": [float(f"{min(c):.6g}") for c in curves],
            "stopped_early_at": stopped,
            "loss_curve": [thin(c) for c in curves],
        }
        if self.operator is not None:
            info["data_last"] = [float(f"{c[-1]:.6g}") for c in data_curves]
            info["operator"] = self.operator.describe()
        ctx.report[self.id] = info


def _eps(ctx: RunContext, x: torch.Tensor, t: int) -> torch.Tensor:
    return ctx.denoise(x, t).eps


def _to_sphere(
    latent: torch.Tensor, radius: float, rows: torch.Tensor, deterministic: bool = True
) -> None:
    """Rescale the selected samples of ``latent`` to norm ``radius``: batched, or one sample at
    a time in ``deterministic`` runs."""
    with torch.no_grad():
        if not deterministic:
            shape = (-1, *([1] * (latent.dim() - 1)))
            if bool(rows.all()):  # the usual case: no masked copies
                norms = latent.flatten(1).norm(dim=1).clamp_min(1e-12)
                latent.mul_((radius / norms).view(shape))
                return
            picked = rows.to(latent.device)
            sel = latent[picked]
            norms = sel.flatten(1).norm(dim=1).clamp_min(1e-12)
            latent[picked] = sel * (radius / norms).view(shape)
            return
        for i in torch.nonzero(rows).flatten().tolist():
            row = latent[i].clone()
            latent[i] = row * (radius / row.norm().clamp_min(1e-12))


STAGES = (Shred,)


def contribute(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
