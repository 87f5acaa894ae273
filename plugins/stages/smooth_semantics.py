"""PGDiff's smooth-semantics property: keep x0 close to a restorer's output of the observation.

Loss (per sample, sum-reduced as in the official code): ``||x0 - f(y)||^2`` with the target
detached, ``f`` any registered restorer.  The paper's ``f`` is an MSE-trained network taking
``(x_t, y, t)``; a restorer whose output ignores ``t`` is computed once per run.  The number of
restorer calls goes into the run report (``restorer_calls``), so its cost is visible.
"""

from __future__ import annotations

import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.loop_api import RunResult
from guidestack.engine.restorer import Restorer, restore
from guidestack.engine.stage import Stage

from .pgdiff_options import SmoothSemanticsOptions
from .properties import sum_per_sample


class RestorerTarget(Stage):
    """A stage whose target is a restorer's output of the observation (built in ``setup``)."""

    restorer: Restorer

    def setup(self, ctx: RunContext) -> None:
        self.restorer = self.options.restorer.build(ctx.registry)

    def target(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        """``f(y)`` (cached for the run unless the restorer depends on ``t``), detached."""
        y = ctx.observation.image
        out = restore(ctx, self.id, self.restorer, y, state.x_t, state.t)
        return out.detach().to(dtype=state.x0.dtype)

    @hookimpl
    def finalize(self, ctx: RunContext, result: RunResult) -> None:
        ctx.report.setdefault("restorer_calls", {})[self.id] = self.restorer.calls


class SmoothSemantics(RestorerTarget):
    name = "smooth-semantics"
    description = (
        "PGDiff restoration property: ||x0 - f(y)||^2 with f a restorer (target detached)."
    )
    Options = SmoothSemanticsOptions

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        return sum_per_sample((state.x0 - self.target(ctx, state)).pow(2))
