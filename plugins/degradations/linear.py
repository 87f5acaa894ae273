"""Operators that change resolution or colour: identity, downsampling, grayscale."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Degradation, DegradationOptions

#: ITU-R BT.601 luma weights; they sum to 1, so the map commutes with the [-1, 1] scaling
LUMA = (0.299, 0.587, 0.114)


class IdentityOptions(DegradationOptions):
    pass


class Identity(Degradation):
    name = "identity"
    description = "H(x) = x: plain inversion of the prior (SHRED's reconstruction experiment)."
    Options = IdentityOptions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DownsampleOptions(DegradationOptions):
    factor: int = Field(4, ge=2, le=64, description="downsampling factor k (output side = side / k)")
    mode: Literal["area", "bicubic"] = Field(
        "area",
        description="area: average of k x k blocks (SHRED/BIRD's uniform downsampling); "
        "bicubic: antialiased bicubic resize",
    )


class Downsample(Degradation):
    """``H(x)`` is the low-resolution image.  The engine holds observations at the prior's size
    (the CLI resizes a 16x16 input bicubically to 64x64), so :meth:`measure` applies the same
    downsampling to the observation: area-pooling a bicubic upsampling returns the original
    low-resolution pixels up to a small blur (measured in tests/test_degradations.py)."""

    name = "downsample"
    description = "Downsampling by an integer factor (super-resolution); compares at low resolution."
    Options = DownsampleOptions
    severities = {1: {"factor": 2}, 2: {"factor": 3}, 3: {"factor": 4}, 4: {"factor": 6}, 5: {"factor": 8}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.options.factor
        size = (max(1, round(x.shape[-2] / k)), max(1, round(x.shape[-1] / k)))
        if self.options.mode == "area":
            return F.interpolate(x, size=size, mode="area")
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)

    def measure(self, y: torch.Tensor) -> torch.Tensor:
        return self(y)


class GrayscaleOptions(DegradationOptions):
    pass


class Grayscale(Degradation):
    name = "grayscale"
    description = "Luma (BT.601) of an RGB image, one channel (colorization)."
    Options = GrayscaleOptions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x
        if x.shape[1] != 3:
            raise ValueError(f"grayscale expects 1 or 3 channels, got {x.shape[1]}")
        w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)

    def measure(self, y: torch.Tensor) -> torch.Tensor:
        return self(y)
