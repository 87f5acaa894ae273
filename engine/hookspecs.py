"""Every hook a plugin can implement, one documented function each: the ONE source of the hook
reference.  docs/hooks.md is generated from this module (and the ``Registry.add_*`` methods, and
the classes hooks receive) by ``python -m guidestack.engine.hookdoc docs/hooks.md``; ``guidestack
explain`` and the ``new-plugin`` scaffold read the same docstrings.

Two levels:

* package level: ``register(registry)``, a module-level function of the module a plugin's
  entry point names, adds named stages, priors, restorers, degradations, commands and recipe
  folders to the registry; it runs once per process, built-in plugin first, then entry points;
* run level: methods of a ``Stage`` subclass, marked ``@hookimpl``.  One instance is made per
  ``[[stage]]`` table of a recipe and per run, and the sampler loop calls each hook on every
  stage implementing it, in RECIPE order (the order of the ``[[stage]]`` tables, whatever plugin
  a stage comes from).

A stage implements any subset of the run hooks and may accept any subset of a hook's arguments
(``def project(self, state)`` is fine); the argument names are checked when the stage is
registered and again (by pluggy) when a run's stages are assembled, so a misspelt argument is an
error before the first step, naming the stage.  An
exception raised in a hook becomes a ``StageError`` naming the stage, the hook and the step.

The engine calls run hooks itself, so that recipe order is the order that runs and a failure
names its stage and step.  pluggy's ordering and wrapping options are therefore refused, not
ignored (:data:`REFUSED_OPTIONS` says how to get each one's effect): a stage using one is an
error when it is registered and when a run is assembled.  Hooks are found by method name: a method named like a hook without
``@hookimpl``, ``@hookimpl`` on a name that is not a run hook, and ``specname`` are refused too.
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
#: Bumped whenever a hook is added or a signature changes (never for documentation or for
#: refusing options that were already ignored).  Plugins declare ``hook_api_version = N``.
HOOK_API_VERSION = 2
#: what each hook API version changed
HOOK_API_HISTORY = {
    1: "first version: register, initial_latent, update_latent, guidance_loss, project, "
    "optimise, finalize",
    2: "added transform_x0",
}

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: pluggy hookimpl options guidestack refuses, with how to get their effect.  Stages run in
#: recipe order because the engine calls each implementation itself.
REFUSED_OPTIONS = {
    "tryfirst": "To run this stage's hook before the others, put its [[stage]] table first in "
    "the recipe",
    "trylast": "To run this stage's hook after the others, put its [[stage]] table last in the "
    "recipe",
    "hookwrapper": "To act before and after the other stages' hook, implement the hook plainly "
    "in two stages, one [[stage]] table before the others and one after them",
    "wrapper": "To act before and after the other stages' hook, implement the hook plainly in "
    "two stages, one [[stage]] table before the others and one after them",
}

#: The loop, as ``guidestack.engine.sampler.run_stages`` runs it.  Each line calls the hook on
#: every stage that implements it, in recipe order.  tests/test_plugin_docs.py checks the hooks
#: appear here in the order the real loop calls them.
LOOP = """\
setup(ctx)                                     plain method, once per stage, before anything
optimise(ctx, loop) -> image | None            first non-None result replaces everything below
  initial_latent(ctx) -> InitialLatent | None  where to start; default: noise at the top of the grid
  for each grid step t -> t_prev (ORIGINAL timesteps), and each repeat inside guidance.repeat_window:
    update_latent(ctx, state)                  change state.x_t before the model call
    eps = prior(x_t, t); x0 = predict_x0(...)  one counted model call; x0 clipped if sampler.clip_x0
    transform_x0(ctx, state)                   change state.x0 (thresholding)
    guidance_loss(ctx, state) -> [N] | None    on a detached x0; g = d(sum_i weight_i * L_i)/d x0
    step rule                                  x0 rule: x0 -= s*g; DDPM/DDIM mean and std; noise;
                                               mean_shift / dynamic / dynamic_channel update
    project(ctx, state)                        change state.x_prev (paste-back, clipping, ILVR)
finalize(ctx, result)                          change result.image (clamped to [-1, 1] before)
"""


# --- package level -------------------------------------------------------------------------


@hookspec
def register(registry: Registry) -> None:
    """Add this plugin's stages, restorers, degradations, priors, commands and recipe folders.

    A module-level function of the module the plugin's entry point names (entry-point group
    ``guidestack``), called once per process when the registry is built: the built-in plugin
    first, then entry points in discovery order.  It calls the ``registry.add_*`` methods below.
    It must not do expensive work: ``guidestack plugins`` and every run call it.

    Names are global: a name another plugin already registered is an error naming both plugins
    (nothing is silently overridden).  A plugin that fails (an import error, ``sys.exit``, an
    exception in ``register``, a clash, a hook API newer than guidestack's) is reported with its
    name and how to block it, everything it had registered is removed, and the other plugins
    keep working.
    """


# --- run level, in the order the loop calls them -------------------------------------------


@hookspec(firstresult=True)
def optimise(ctx: RunContext, loop: LoopHandle) -> torch.Tensor | None:
    """Outer optimisation: produce the final image by wrapping the loop, e.g. optimising x_T.

    Once per run, after ``setup`` and instead of the ordinary loop: return the final image
    ``[N, C, H, W]``, or ``None`` to let the ordinary loop run.  ``loop.sample(initial)`` runs
    the ordinary reverse loop from an ``InitialLatent`` (so ``update_latent``, ``transform_x0``,
    ``guidance_loss`` and ``project`` of the other stages still run) and returns x0;
    ``loop.guidance_loss(x0, t)`` returns the other stages' summed weighted loss with its graph.
    SHRED optimises x_T through ``loop.sample(InitialLatent(x_T, t))`` this way.
    """


@hookspec(firstresult=True)
def initial_latent(ctx: RunContext) -> InitialLatent | None:
    """Pre-step inversion: choose where the reverse process starts.

    Once per loop, before the first step: return ``InitialLatent(x, t)`` to start from ``x`` at
    ORIGINAL timestep ``t`` (DDIM inversion in ODEdit, the diffused estimator in DifFace), or
    ``None`` to decline.  Without one the run starts from ``ctx.randn()`` at the top of the grid.
    """


@hookspec
def update_latent(ctx: RunContext, state: StepState) -> None:
    """Latent update before the denoiser call at ``state.t``: change ``state.x_t``.

    Every step and every repeat: change ``state.x_t`` in place or assign a new tensor (ODEdit's
    Langevin updates, annealing).  Extra model calls go through ``ctx.denoise`` so they are
    counted.
    """


@hookspec
def transform_x0(ctx: RunContext, state: StepState) -> None:
    """Change the x0 prediction right after the denoiser call, before guidance and the step rule.

    Every step, after the model call and after the sampler's own ``clip_x0`` (turn that off for
    thresholds above 1): assign ``state.x0`` (dynamic thresholding, custom clamps).  The step rule
    uses the result: DDIM re-derives its direction ``eps = (x_t - sqrt(abar) x0) / sqrt(1 -
    abar)`` from it, DDPM builds its posterior mean on it; ``state.eps`` keeps the raw model
    output.  Added in hook API 2.
    """


@hookspec
def guidance_loss(ctx: RunContext, state: StepState) -> torch.Tensor | None:
    """Per-step guidance: return a per-sample loss ``[N]`` computed from ``state.x0``.

    Every step inside the recipe's ``guidance.window`` when ``guidance.scale > 0``.
    ``state.x0`` is a detached copy of the prediction with ``requires_grad`` set (do not detach
    it yourself); return ``None`` to skip this step.  The engine multiplies each loss by the
    stage's ``weight``, ignores it outside the stage's own ``window``, sums them, takes ONE
    gradient ``g`` with respect to x0 and applies ``guidance.rule`` (``mean_shift``,
    ``dynamic``, ``dynamic_channel``, ``x0``).  A non-finite loss or gradient stops the run with
    an error naming the step.
    """


@hookspec
def project(ctx: RunContext, state: StepState) -> None:
    """Post-step projection on ``state.x_prev`` (known-pixel paste-back, clipping, ILVR).

    Every step and repeat, after the step rule and the guidance update: assign ``state.x_prev``.
    ``state.x0`` is the (guided) prediction of this step; ``state.t_prev`` is the noise level of
    ``x_prev`` (``-1``: clean).
    """


@hookspec
def finalize(ctx: RunContext, result: RunResult) -> None:
    """Last word on the output: change ``result.image``, e.g. paste the known pixels back.

    Once per run, last: ``result.image`` is already clamped to [-1, 1]; a stage may also add
    facts to ``result.info``.
    """


#: run-level hooks, in the order the loop calls them (tests/test_plugin_docs.py checks this)
RUN_HOOKS = (
    "optimise",
    "initial_latent",
    "update_latent",
    "transform_x0",
    "guidance_loss",
    "project",
    "finalize",
)
#: hooks at most one stage of a recipe may implement (the first non-``None`` result is used)
EXCLUSIVE_HOOKS = ("optimise", "initial_latent")
#: package-level hooks: module-level functions of a plugin module, never stage methods
PACKAGE_HOOKS = ("register",)
