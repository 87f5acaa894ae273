"""DifFace's stages' options models, in a module that does not import torch: recipes are
validated and stages listed (``guidestack validate``, ``guidestack plugins``) without loading the
method.  The stage modules re-export them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from guidestack.engine.refs import PinvOperatorRef, RestorerRef
from guidestack.engine.stage import StageOptions

# --- difface -----------------------------------------------------------------------------------


class DifFaceOptions(StageOptions):
    restorer: RestorerRef = Field(
        default_factory=lambda: RestorerRef(use="gaussian-blur", sigma=1.0),
        description=(
            "restorer f giving the estimate f(y) that is diffused to the start "
            '(paper: SwinIR; e.g. { use = "gaussian-blur", sigma = 1.0 })'
        ),
    )
    start: int = Field(
        400,
        ge=0,
        description="ORIGINAL timestep N the run starts from (paper: 400 restoration, 480 inpainting)",
    )
    first_call: Literal["start", "below"] = Field(
        "start",
        description=(
            "start: the first model call is at N, the noise level of x_N; below: at the sampler's"
            " grid point below N, x_N taken as that latent (the official code: 396 for N = 400"
            " on ddim250)"
        ),
    )
    fill_missing: bool = Field(
        False,
        description=(
            "fill pixels where the mask is 1 from their surroundings before the restorer "
            "(a stand-in for the paper's mask-aware inpainting estimator); needs a mask"
        ),
    )

    def prior_problems(self, prior: Any) -> list[tuple[str, str]]:
        top = prior.num_train_timesteps - 1
        if self.start > top:
            return [("start", f"{self.start} is beyond the prior's last timestep {top}")]
        return []


# --- paste_known -------------------------------------------------------------------------------


class PasteKnownOptions(StageOptions):
    final: bool = Field(True, description="paste the known pixels of y into the final image")
    every_step: bool = Field(
        False,
        description="also replace the known pixels of every x_prev by y diffused to t_prev (RePaint-style)",
    )
    feather: float = Field(
        0.0,
        ge=0.0,
        le=16.0,
        description=(
            "for the final paste, blend over this many pixels (Gaussian sigma) outside the "
            "missing region to hide seams; 0 = hard paste"
        ),
    )
    operator: PinvOperatorRef | None = Field(
        None,
        description="a linear operator with a pseudo-inverse: paste = x - H^+(H x - y); default: "
        "the observation's mask",
    )

    @model_validator(mode="after")
    def _feather_needs_a_mask(self) -> PasteKnownOptions:
        if self.feather > 0 and self.operator is not None:
            raise ValueError("feather blends a mask's seam; it does not apply with an operator")
        return self
