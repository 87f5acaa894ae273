"""PGDiff's optional quality property: a perceptual distance between x0 and a target.

The paper adds a VGG perceptual loss (weight 1e-2) to blind restoration; here it is LPIPS
(``lpips`` package, AlexNet or VGG16 backbone with its calibrated linear heads), against a
restorer's output of the observation (``identity`` by default: the observation itself) or the
reference image.  ``reduction = "sum"`` sums LPIPS's per-pixel map, so the loss is on the same
sum-reduced scale as PGDiff's squared errors; ``"mean"`` is the usual LPIPS score.

Backbone weights: ``backbone = "path"`` (a state dict of ``lpips``'s backbone, e.g. the tests'
``lpips_alexnet_backbone.pt``) or torchvision's cached ImageNet weights, downloaded at first use
when online (checksum-verified); offline without them the stage fails with a message that says
how to get them.
"""

from __future__ import annotations

import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.restorer import restore

from .. import networks
from .pgdiff_options import PerceptualOptions
from .properties import (
    cached_model,
    file_key,
    require_input,
    run_network,
    sum_per_sample,
    user_file,
)
from .smooth_semantics import RestorerTarget


class Perceptual(RestorerTarget):
    name = "perceptual"
    description = (
        "Perceptual quality property: LPIPS (AlexNet/VGG) between x0 and f(y) or the reference."
    )
    Options = PerceptualOptions

    @classmethod
    def requires_for(cls, options: PerceptualOptions) -> tuple[str, ...]:
        return ("reference",) if options.target == "reference" else ()

    def setup(self, ctx: RunContext) -> None:
        o = self.options
        super().setup(ctx)
        if o.target == "reference":
            require_input(ctx, "reference", self.id, "it is the perceptual target")
        if o.backbone is not None:
            path = user_file(o.backbone, self.id, "backbone")
        else:
            path = networks.torchvision_cache_path(o.net)
            if not path.is_file():
                networks.fetch_weights(
                    networks.TORCHVISION_URLS[o.net],
                    path,
                    f"{self.id}: the ImageNet {o.net} backbone weights of LPIPS",
                    f'set the stage option backbone = "/path/to/{path.name}" (on the command '
                    f"line: --set stage.{self.id}.backbone=/path/to/{path.name})",
                    sha256=networks.TORCHVISION_SHA256[o.net],
                )
        self.model = cached_model(
            ("lpips", o.net, *file_key(path), str(ctx.device)),
            lambda: networks.load_lpips(o.net, path, ctx.device),
        )

    def target(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        if self.options.target == "reference":
            return ctx.observation.reference.to(device=state.x0.device, dtype=state.x0.dtype)
        y = ctx.observation.image
        return (
            restore(ctx, self.id, self.restorer, y, state.x_t, state.t).detach().to(state.x0.dtype)
        )

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        target = self.target(ctx, state).float()
        pairs = torch.cat([state.x0.float(), target], dim=1)
        net = lambda xy: self.model(xy[:, :3], xy[:, 3:])  # noqa: E731
        maps = run_network(net, pairs, ctx.deterministic)
        loss = (
            sum_per_sample(maps) if self.options.reduction == "sum" else maps.flatten(1).mean(dim=1)
        )
        return loss.to(state.x0.dtype)
