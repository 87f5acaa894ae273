"""DPS's options models, in a module that does not import torch: recipes are
validated and stages listed (``guidestack validate``, ``guidestack plugins``) without loading the
method.  The stage modules re-export them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from guidestack.engine.refs import OperatorRef
from guidestack.engine.stage import GuidanceOptions

# --- dps ---------------------------------------------------------------------------------------


class DPSOptions(GuidanceOptions):
    operator: OperatorRef = Field(
        description='the measurement operator H, e.g. { use = "downsample", factor = 4, '
        'mode = "bicubic" } or { use = "mask" }; any differentiable operator (non-linear too)'
    )
    noise_model: Literal["gaussian", "poisson"] = Field(
        "gaussian",
        description="gaussian: the data term is ||y - H(x0)||; poisson: the official code's "
        "||y - H(x0)|| * mean(1 / |y|)",
    )
    paper_update: bool = Field(
        True,
        description='require the paper\'s update ([guidance] target = "xt", rule = "gradient"); '
        "false: the loss joins whatever rule and target the recipe uses",
    )
