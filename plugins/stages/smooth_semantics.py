"""PGDiff's smooth-semantics property: keep x0 close to a restorer's output of the observation.

Loss (per sample, sum-reduced as in the paper's code): ``||x0 - f(y)||^2`` with the target
detached, ``f`` any registered restorer.
"""

from __future__ import annotations

import torch
from pydantic import Field

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.refs import RestorerRef
from guidestack.engine.restorer import restore
from guidestack.engine.stage import GuidanceOptions, Stage


class SmoothSemanticsOptions(GuidanceOptions):
    restorer: RestorerRef = Field(
        default_factory=lambda: RestorerRef(use="gaussian-blur"),
        description="restorer f giving the target f(y), e.g. { use = \"gaussian-blur\", sigma = 1.5 }",
    )


class SmoothSemantics(Stage):
    name = "smooth-semantics"
    description = "PGDiff restoration property: ||x0 - f(y)||^2 with f a restorer (target detached)."
    Options = SmoothSemanticsOptions

    def setup(self, ctx: RunContext) -> None:
        self.restorer = self.options.restorer.build(ctx.registry)

    def target(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        return restore(ctx, self.id, self.restorer, ctx.observation.image, state.x_t, state.t)

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        target = self.target(ctx, state).detach()
        return (state.x0 - target).pow(2).flatten(1).sum(dim=1)
