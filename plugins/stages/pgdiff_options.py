"""PGDiff's property stages' options models, in a module that does not import torch: recipes are
validated and stages listed (``guidestack validate``, ``guidestack plugins``) without loading the
method.  The stage modules re-export them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from guidestack.engine.refs import OperatorRef, RestorerRef
from guidestack.engine.stage import GuidanceOptions

# --- smooth_semantics --------------------------------------------------------------------------


class SmoothSemanticsOptions(GuidanceOptions):
    restorer: RestorerRef = Field(
        default_factory=lambda: RestorerRef(use="gaussian-blur"),
        description='restorer f giving the target f(y), e.g. { use = "gaussian-blur", sigma = 1.5 }',
    )


# --- lightness ---------------------------------------------------------------------------------


class LightnessOptions(GuidanceOptions):
    restorer: RestorerRef = Field(
        default_factory=lambda: RestorerRef(use="identity"),
        description='target f(y): "identity" (default) is the observation; old photo uses a smoother',
    )
    region: Literal["all", "known"] = Field(
        "all", description="known: only pixels the mask marks known (all pixels without a mask)"
    )


# --- color_statistics --------------------------------------------------------------------------


class ColorStatisticsOptions(GuidanceOptions):
    weight: float = Field(
        0.05, ge=0.0, description="0.05 for colorization, 0.5 in old photo (official)"
    )
    statistics: Literal["celeba-hq", "custom", "reference", "folder"] = Field(
        "celeba-hq", description="where the target per-channel mean/std come from"
    )
    mean: tuple[float, float, float] | None = Field(
        None, description="custom: R, G, B means in [-1, 1]"
    )
    std: tuple[float, float, float] | None = Field(None, description="custom: R, G, B stds (> 0)")
    path: str | None = Field(None, description="folder: a folder of images (or one image)")
    stop_gradient: bool = Field(
        True, description="detach the AdaIN target (paper); false = official code"
    )
    mask_gradient: bool = Field(
        False,
        description="no gradient inside the mask (the official old-photo code zeroes it there)",
    )

    @model_validator(mode="after")
    def _source_complete(self) -> ColorStatisticsOptions:
        if self.statistics == "custom":
            if self.mean is None or self.std is None:
                raise ValueError('statistics = "custom" needs both mean and std')
            if min(self.std) <= 0:
                raise ValueError("std values must be > 0")
        if self.statistics == "folder" and not self.path:
            raise ValueError('statistics = "folder" needs path (a folder of images or one image)')
        return self


# --- unmasked_region ---------------------------------------------------------------------------


class UnmaskedRegionOptions(GuidanceOptions):
    operator: OperatorRef | None = Field(
        None,
        description="measurement operator H: the loss becomes ||H(x0) - y||^2 with y in H's "
        "space; default: the observation's mask, ||(1 - M)(x0 - y)||^2",
    )


# --- identity ----------------------------------------------------------------------------------


class IdentityOptions(GuidanceOptions):
    weight: float | None = Field(
        None, ge=0.0, description="default: 10 for cosine (paper), 25 for mse (code)"
    )
    distance: Literal["cosine", "mse"] = Field(
        "cosine", description="cosine: 1 - cos (paper); mse: sum of squares (code)"
    )
    weights: str | None = Field(
        None,
        description="InceptionResnetV1 state dict file (default: facenet-pytorch's cache)",
    )
    size: int = Field(
        160, ge=80, le=512, description="side the images are resized to before embedding"
    )


# --- perceptual --------------------------------------------------------------------------------


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
