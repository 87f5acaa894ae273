"""PGDiff's partial-guidance properties (Yang et al., NeurIPS 2023): each property is one
guidance stage, so recipes compose them freely (old photo = lightness + colour statistics).

The engine supplies the rest of the method: DDPM sampling, the mean-shift and dynamic update
rules, repeats inside a window of ORIGINAL timesteps (``[guidance]`` table); see docs/pgdiff.md.
"""

from __future__ import annotations

from guidestack.engine.registry import Registry

from .color_statistics import ColorStatistics
from .identity import Identity
from .lightness import Lightness
from .perceptual import Perceptual
from .smooth_semantics import SmoothSemantics
from .unmasked_region import UnmaskedRegion

STAGES = (SmoothSemantics, Lightness, ColorStatistics, UnmaskedRegion, Identity, Perceptual)


def contribute(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
