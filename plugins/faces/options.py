"""The ``faces`` pipeline's options, in a module that does not import torch (listings and
option checks need no detector); :mod:`.pipeline` re-exports them."""

from __future__ import annotations

from pydantic import Field

from guidestack.engine.config import PipelineOptions

#: default minimum probability of a face (MTCNN's last stage already drops faces below 0.7)
DEFAULT_THRESHOLD = 0.9
#: default minimum face size: the shorter side of the detector's box, in the photo's pixels
DEFAULT_MIN_FACE = 32
#: the largest face side accepted as --min-face (the longest side an input may have)
MAX_SIDE = 16384


# --- pipeline ----------------------------------------------------------------------------------


class FacesOptions(PipelineOptions):
    min_face: float = Field(
        DEFAULT_MIN_FACE, gt=0, le=MAX_SIDE, description="smallest face side in pixels to restore"
    )
    threshold: float = Field(
        DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="MTCNN probability a face needs"
    )
    upscale: int = Field(
        1, ge=1, le=8, description="output size factor (the background is upsampled)"
    )
    background_upsampler: str | None = Field(
        None,
        description="registered upsampler of the background (default: the run's upsampler, "
        "which also brings each restored face to its size in the photo)",
    )
