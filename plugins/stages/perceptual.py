"""PGDiff's optional quality property: a perceptual distance between x0 and a target.

The paper adds a VGG perceptual loss (weight 1e-2) to blind restoration; here it is LPIPS
(``lpips`` package, AlexNet or VGG16 backbone with its calibrated linear heads), against a
restorer's output of the observation (``identity`` by default: the observation itself) or the
reference image.  ``reduction = "sum"`` sums LPIPS's per-pixel map, so the loss is on the same
sum-reduced scale as PGDiff's squared errors; ``"mean"`` is the usual LPIPS score.

Backbone weights: ``backbone = "path"`` (a state dict of ``lpips``'s backbone, e.g. the tests'
``lpips_alexnet_backbone.pt``) or torchvision's cached ImageNet weights, downloaded at first use
when online; offline without them the stage fails with a message that says how to get them.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.errors import InputError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.refs import RestorerRef
from guidestack.engine.restorer import restore

from .properties import (
    cached_model,
    fetch_weights,
    file_key,
    require_input,
    run_network,
    sum_per_sample,
    user_file,
)
from .smooth_semantics import RestorerTarget, SmoothSemanticsOptions

#: torchvision's ImageNet backbones, as ``lpips`` would download them through torchvision
TORCHVISION_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
_SLICE_KEY = re.compile(r"^slice\d+\.(\d+)\.(weight|bias)$")


def torchvision_cache_path(net: str) -> Path:
    """Where torchvision caches the backbone (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(TORCHVISION_URLS[net]).name


def backbone_state(path: Path, lpips_net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict for ``lpips_net`` from ``path``: lpips's own ``sliceK.i`` keys, or a full
    torchvision checkpoint (``features.i.*`` keys, classifier ignored)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"perceptual: cannot read backbone file {path}: {exc}") from exc
    wanted = lpips_net.state_dict().keys()
    if isinstance(state, dict) and set(wanted) <= set(state):
        return {k: state[k] for k in wanted}
    converted = {}
    for key in wanted:
        match = _SLICE_KEY.match(key)
        source = f"features.{match[1]}.{match[2]}" if match else None
        if not isinstance(state, dict) or source not in state:
            raise InputError(
                f"perceptual: {path} is neither an lpips backbone state dict nor a torchvision "
                f"checkpoint of the same network (no '{key}' or '{source}')"
            )
        converted[key] = state[source]
    return converted


def load_lpips(net: str, path: Path, device: torch.device) -> torch.nn.Module:
    """``lpips.LPIPS`` with its shipped linear heads and the backbone at ``path``, frozen."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" notices
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, spatial=True, verbose=False)
    model.net.load_state_dict(backbone_state(path, model.net))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device)


class PerceptualOptions(SmoothSemanticsOptions):
    weight: float = Field(1e-2, ge=0.0, description="paper: 1e-2 (quality enhancement)")
    restorer: RestorerRef = Field(
        default_factory=lambda: RestorerRef(use="identity"),
        description="target f(y) when target = restorer; identity: the observation itself",
    )
    target: Literal["restorer", "reference"] = Field(
        "restorer", description="compare x0 with f(y) or with the reference"
    )
    net: Literal["alex", "vgg"] = Field("alex", description="LPIPS backbone")
    backbone: str | None = Field(
        None,
        description="backbone state dict file (default: torchvision's cache, downloaded when online)",
    )
    reduction: Literal["sum", "mean"] = Field(
        "sum", description="sum (PGDiff's loss scale) or mean of LPIPS's per-pixel map"
    )


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
            path = torchvision_cache_path(o.net)
            if not path.is_file():
                fetch_weights(
                    TORCHVISION_URLS[o.net],
                    path,
                    f"{self.id}: the ImageNet {o.net} backbone weights of LPIPS",
                    f'set the stage option backbone = "/path/to/{path.name}" (on the command '
                    f"line: --set stage.{self.id}.backbone=/path/to/{path.name})",
                )
        self.model = cached_model(
            ("lpips", o.net, *file_key(path), str(ctx.device)),
            lambda: load_lpips(o.net, path, ctx.device),
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
