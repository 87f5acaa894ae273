"""The stages' options models and descriptions, in a module that does not import torch.

The plugin registers its stages lazily (see :mod:`.plugin`): listing plugins, checking recipes
and ``guidestack --help`` read only this module, and the stage modules (which import torch) are
imported when a run uses them.
"""

from __future__ import annotations

from guidestack.engine.stage import GuidanceOptions, StageOptions
from pydantic import Field, model_validator

MIRROR_SYMMETRY = (
    "Guidance towards a left-right symmetric face: 1/2 ||W (B(x0) - flip(B(x0)))||^2, "
    "B a blur, W the face box."
)
ILVR = "ILVR projection: replace the latent's low frequencies by those of the noised input."


class MirrorSymmetryOptions(GuidanceOptions):
    sigma: float = Field(
        0.0,
        ge=0.0,
        le=16.0,
        description="blur x0 by this many pixels before comparing it with its mirror image "
        "(0 = compare pixels; larger = only coarse structure is made symmetric)",
    )
    extent: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="side of the centred box compared, as a fraction of the image; the weight "
        "tapers from 1 at the centre to 0 at the box's border (1 = the whole image)",
    )


class LowPassOptions(StageOptions):
    factor: int = Field(
        4,
        ge=2,
        le=64,
        description="down-sampling factor N of the low-pass filter: the input's structure above "
        "N pixels is kept (larger N keeps less of the input)",
    )
    window: tuple[int, int] = Field(
        (-1, 1000),
        description="project when lo < t <= hi (ORIGINAL timesteps); default: every step, so "
        "the output's low-pass equals the input's; raise lo to let the prior finish alone",
    )

    @model_validator(mode="after")
    def _window_ordered(self) -> LowPassOptions:
        lo, hi = self.window
        if lo >= hi:
            raise ValueError(f"window must be [lo, hi] with lo < hi, got [{lo}, {hi}]")
        return self
