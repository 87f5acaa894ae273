"""Every hook a plugin can implement, one documented function each.

Two levels:

* package level, on the global plugin manager: :func:`register` adds named stages, priors,
  restorers, degradations and recipe folders to the registry;
* run level, implemented by stage instances in a run: the sampler loop calls them in the order
  shown in docs/plugins.md.  Stages run in RECIPE order (the engine calls each implementation
  itself, so pluggy's last-registered-first order never leaks to users).

A stage implements any subset of the run-level hooks, and may accept any subset of a hook's
arguments (pluggy's convention).  Bump :data:`HOOK_API_VERSION` when a signature changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .context import InitialLatent, RunContext, StepState
    from .loop_api import LoopHandle, RunResult
    from .registry import Registry

PROJECT = "guidestack"
#: 2 added ``transform_x0``
HOOK_API_VERSION = 2

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- package level -------------------------------------------------------------------------


@hookspec
def register(registry: Registry) -> None:
    """Add this plugin's stages, priors, restorers, degradations and recipe folders.

    Called once per process for every installed plugin (entry-point group ``guidestack``).
    Use ``registry.add_stage(cls)``, ``registry.add_prior(...)``, ``registry.add_restorer(cls)``,
    ``registry.add_recipes(folder)``.  A name already taken is an error.
    """


# --- run level -----------------------------------------------------------------------------


@hookspec(firstresult=True)
def initial_latent(ctx: RunContext) -> InitialLatent | None:
    """Pre-step inversion: where the reverse process starts.

    Return an :class:`InitialLatent` (``x`` at ORIGINAL timestep ``t``) or ``None`` to decline.
    Only one stage of a recipe may implement it (checked before running); with none the run
    starts from Gaussian noise at the top of the grid.  Examples: DDIM inversion (ODEdit),
    the diffused estimator (DifFace).
    """


@hookspec
def update_latent(ctx: RunContext, state: StepState) -> None:
    """Latent update before the denoiser call at ``state.t``: change ``state.x_t`` in place or
    assign a new tensor (Langevin updates, annealing).  Called once per step and repeat."""


@hookspec
def transform_x0(ctx: RunContext, state: StepState) -> None:
    """Change the x0 prediction right after the denoiser call, before guidance and the step rule:
    assign ``state.x0`` (dynamic thresholding, custom clamps).

    It runs after the sampler's own ``clip_x0`` (turn that off for thresholds above 1).  The step
    rule uses the result: DDIM re-derives its direction ``eps = (x_t - sqrt(abar) x0) / sqrt(1 -
    abar)`` from it, DDPM builds its posterior mean on it; ``state.eps`` keeps the raw output."""


@hookspec
def guidance_loss(ctx: RunContext, state: StepState) -> torch.Tensor | None:
    """Per-step guidance: return a per-sample loss ``[N]`` computed from ``state.x0``.

    ``state.x0`` is a detached copy of the prediction with ``requires_grad`` set; the engine sums
    the losses of all stages (each times its ``weight``), takes one gradient and applies the
    recipe's update rule.  Return ``None`` to skip this step.
    """


@hookspec
def project(ctx: RunContext, state: StepState) -> None:
    """Post-step projection on ``state.x_prev`` (known-pixel paste-back, clipping, thresholding).

    Assign ``state.x_prev``; ``state.x0`` is the (guided) prediction used for this step."""


@hookspec(firstresult=True)
def optimise(ctx: RunContext, loop: LoopHandle) -> torch.Tensor | None:
    """Outer optimisation: produce the final image by wrapping the loop, e.g. optimising x_T
    (SHRED).  ``loop`` samples from a latent and evaluates the other stages' guidance losses.
    Return the image ``[N, C, H, W]`` or ``None`` to let the ordinary loop run.
    Only one stage of a recipe may implement it."""


@hookspec
def finalize(ctx: RunContext, result: RunResult) -> None:
    """Last word on the output: change ``result.image`` (e.g. paste known pixels back)."""


RUN_HOOKS = (
    "initial_latent",
    "update_latent",
    "transform_x0",
    "guidance_loss",
    "project",
    "optimise",
    "finalize",
)
#: hooks at most one stage of a recipe may implement
EXCLUSIVE_HOOKS = ("initial_latent", "optimise")
