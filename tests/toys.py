"""Small exact priors and recording stages for engine tests (no learned weights)."""

from __future__ import annotations

import torch

from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.prior import Prior, PriorOutput, linear_alphas_cumprod
from guidestack.engine.stage import GuidanceOptions, Stage, StageOptions


class DiagonalGaussianPrior(Prior):
    """Data ~ N(m, diag(v)): the exact MMSE eps is b (x_t - a m) / (a^2 v + b^2)."""

    kind = "toy"

    def __init__(self, size: int = 8, channels: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.image_size, self.channels, self.name = size, channels, "toy-diagonal"
        self.register_buffer("mean", 0.3 * torch.randn(channels, size, size, generator=g))
        self.register_buffer("var", 0.05 + 0.2 * torch.rand(channels, size, size, generator=g))
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod())

    def forward(self, x_t, t):
        abar = self.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        return PriorOutput(eps=b * (x_t - a * self.mean) / (abar * self.var + b * b))


CALLS: list[tuple[str, str]] = []


class RecorderOptions(StageOptions):
    pass


def make_recorder(stage_name: str):
    """A stage implementing every per-step hook, appending (stage id, hook) to CALLS."""

    class Recorder(Stage):
        name = stage_name
        description = "records hook calls"
        Options = RecorderOptions

        @hookimpl
        def update_latent(self, ctx, state):
            CALLS.append((self.id, "update_latent"))

        @hookimpl
        def guidance_loss(self, ctx, state):
            CALLS.append((self.id, "guidance_loss"))
            return None

        @hookimpl
        def project(self, ctx, state):
            CALLS.append((self.id, "project"))

        @hookimpl
        def finalize(self, ctx, result):
            CALLS.append((self.id, "finalize"))

    return Recorder


class ConstantLossOptions(GuidanceOptions):
    value: float = 0.0
    fail_at: int = -1


class PullToZero(Stage):
    """Loss ||x0||^2 (or NaN / an exception at step ``fail_at``) for guidance tests."""

    name = "pull-to-zero"
    description = "test stage"
    Options = ConstantLossOptions

    @hookimpl
    def guidance_loss(self, ctx, state):
        if state.index == self.options.fail_at:
            if self.options.value == 1.0:
                raise ValueError("boom")
            return torch.full((state.x0.shape[0],), float("nan"))
        return state.x0.pow(2).flatten(1).sum(1)


class StartHere(Stage):
    name = "start-here"
    description = "test initial latent"
    Options = RecorderOptions

    @hookimpl
    def initial_latent(self, ctx):
        from guidestack.engine.context import InitialLatent

        return InitialLatent(torch.zeros(ctx.shape), 500)


class StartThere(StartHere):
    name = "start-there"
