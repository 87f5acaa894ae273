"""DDNM's options models, in a module that does not import torch: recipes are
validated and stages listed (``guidestack validate``, ``guidestack plugins``) without loading the
method.  The stage modules re-export them."""

from __future__ import annotations

from pydantic import Field

from guidestack.engine.refs import PinvOperatorRef
from guidestack.engine.stage import StageOptions

# --- ddnm --------------------------------------------------------------------------------------


class DDNMOptions(StageOptions):
    operator: PinvOperatorRef = Field(
        description='the linear operator H with a pseudo-inverse, e.g. { use = "downsample", '
        'factor = 4 }, { use = "mask" }, { use = "grayscale", weights = "mean" }; its noise '
        "(sigma_y) > 0 turns DDNM into DDNM+"
    )
    travel_length: int = Field(
        1, ge=1, le=1000, description="time travel: grid steps jumped back (the paper's l)"
    )
    travel_repeat: int = Field(
        1,
        ge=1,
        le=100,
        description="time travel: passes over each travelled stretch (the paper's r; 1 = none)",
    )
    window: tuple[int, int] | None = Field(
        None,
        description="project only when lo < t <= hi (ORIGINAL timesteps); default: every step",
    )
