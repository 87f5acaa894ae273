"""Registration of the built-in degradation operators (one family of the built-in plugin)."""

from __future__ import annotations

from guidestack.engine.registry import Registry

from .blind import BlindBlur
from .blur import GaussianBlurKernel, MotionBlurKernel
from .compose import Compose
from .damage import FreeFormMask, RandomLines, RandomPixels, Scratches
from .elastic import Elastic
from .linear import Downsample, Grayscale, Identity
from .masks import BoxMask, Mask, PixelSubsample
from .noise import GaussianNoise, PoissonNoise
from .photometric import Contrast, Desaturate, Jpeg, Pixelate
from .random_pick import RandomDegradation

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


#: the benchmark catalogue (each with severities 1..5; ``random`` draws from them)
CATALOGUE = (
    GaussianNoise,
    PoissonNoise,
    Jpeg,
    Contrast,
    Pixelate,
    Desaturate,
    Elastic,
    RandomLines,
    RandomPixels,
    FreeFormMask,
    Scratches,
    RandomDegradation,
)


def contribute(registry: Registry) -> None:
    for cls in (*DEGRADATIONS, *CATALOGUE):
        registry.add_degradation(cls)
