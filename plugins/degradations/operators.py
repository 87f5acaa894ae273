"""Registration of the built-in degradation operators (one family of the built-in plugin)."""

from __future__ import annotations

from guidestack.engine.registry import Registry

from .blind import BlindBlur
from .blur import GaussianBlurKernel, MotionBlurKernel
from .compose import Compose
from .linear import Downsample, Grayscale, Identity
from .masks import BoxMask, Mask, PixelSubsample

DEGRADATIONS = (
    Identity,
    Downsample,
    Grayscale,
    Mask,
    BoxMask,
    PixelSubsample,
    GaussianBlurKernel,
    MotionBlurKernel,
    BlindBlur,
    Compose,
)


def contribute(registry: Registry) -> None:
    for cls in DEGRADATIONS:
        registry.add_degradation(cls)
