"""Blur operators: convolution of every channel with a normalised kernel (Gaussian, motion).

Kernels are built with torch operations, so a kernel whose shape parameters are tensors stays
differentiable in them (the blind operator in :mod:`.blind` reuses :func:`gaussian_kernel`).
Borders are reflected, as a camera sees more scene outside the frame, not black.  The
convolution runs through FFTs (see :func:`blur`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from .base import Degradation, DegradationOptions


def auto_size(sigma: float) -> int:
    """Odd kernel side covering +-3 sigma."""
    return 2 * max(1, math.ceil(3.0 * sigma)) + 1


def _grid(size: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    return torch.meshgrid(r, r, indexing="ij")  # (rows = y, cols = x)


def gaussian_kernel(
    size: int,
    sigma: torch.Tensor | float,
    sigma_y: torch.Tensor | float | None = None,
    angle: float = 0.0,
    *,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """A normalised (anisotropic, rotated) Gaussian ``[size, size]``; differentiable in sigmas."""
    yy, xx = _grid(size, device, dtype)
    theta = math.radians(angle)
    u = math.cos(theta) * xx + math.sin(theta) * yy
    v = -math.sin(theta) * xx + math.cos(theta) * yy
    sx = torch.as_tensor(sigma, device=device, dtype=dtype)
    sy = sx if sigma_y is None else torch.as_tensor(sigma_y, device=device, dtype=dtype)
    k = torch.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return k / k.sum()


def motion_kernel(
    size: int, length: float, angle: float, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """A straight motion streak of ``length`` pixels at ``angle`` degrees, anti-aliased (a pixel's
    weight falls linearly with its distance to the segment, zero beyond one pixel)."""
    yy, xx = _grid(size, device, dtype)
    theta = math.radians(angle)
    dx, dy = math.cos(theta), -math.sin(theta)  # image rows grow downwards
    half = max(length - 1.0, 0.0) / 2
    along = (xx * dx + yy * dy).clamp(-half, half)
    dist = torch.sqrt((xx - along * dx) ** 2 + (yy - along * dy) ** 2)
    k = (1.0 - dist).clamp_min(0.0)
    return k / k.sum()


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of each sample with its kernel (``[k, k]`` shared or ``[N, k, k]``).

    Reflect-pads by ``k // 2`` and convolves with FFTs: the same result as ``conv2d`` on the
    padded image (to float rounding) but several times faster when the kernel itself needs a
    gradient (blind mode), where CPU convolutions take a slow weight-gradient path.  One sample
    at a time, so a sample's result does not depend on the batch it is in.
    """
    n, c, h, w = x.shape
    if kernels.dim() == 2:
        kernels = kernels.expand(n, -1, -1)
    if kernels.shape[0] != n:
        raise ValueError(f"got {kernels.shape[0]} kernels for {n} images")
    size = kernels.shape[-1]
    if size % 2 == 0:
        raise ValueError(f"kernels must have an odd side, got {size}")
    pad = size // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    hp, wp = h + 2 * pad, w + 2 * pad
    out = []
    for i in range(n):
        xi = F.pad(x[i : i + 1], (pad, pad, pad, pad), mode=mode) if pad else x[i : i + 1]
        # correlation as conv2d does it: flip the kernel, place it at the origin, crop the
        # wrap-free part of the circular convolution
        ki = F.pad(kernels[i].to(x.dtype).flip(0, 1), (0, wp - size, 0, hp - size))
        spectrum = torch.fft.rfft2(xi) * torch.fft.rfft2(ki)
        full = torch.fft.irfft2(spectrum, s=(hp, wp))
        out.append(full[..., size - 1 :, size - 1 :])
    return torch.cat(out)


def kernel_width(kernels: torch.Tensor) -> torch.Tensor:
    """Per-kernel isotropic width ``sqrt(E|r - r_mean|^2 / 2)``: the sigma of a Gaussian with the
    same second moment (``[N]`` for ``[N, k, k]``)."""
    k = kernels / kernels.sum(dim=(-2, -1), keepdim=True)
    yy, xx = _grid(k.shape[-1], k.device, k.dtype)
    my = (k * yy).sum(dim=(-2, -1), keepdim=True)
    mx = (k * xx).sum(dim=(-2, -1), keepdim=True)
    second = (k * ((yy - my) ** 2 + (xx - mx) ** 2)).sum(dim=(-2, -1))
    return (second / 2).sqrt()


class GaussianBlurOptions(DegradationOptions):
    sigma: float = Field(2.0, gt=0, le=30, description="standard deviation in pixels (x axis)")
    sigma_y: float | None = Field(
        None, gt=0, le=30, description="y-axis sigma (anisotropic); default sigma"
    )
    angle: float = Field(0.0, ge=-180, le=180, description="rotation of the x axis in degrees")
    size: int | None = Field(
        None, ge=1, le=101, description="odd kernel side; default covers 3 sigma"
    )

    @model_validator(mode="after")
    def _odd(self) -> GaussianBlurOptions:
        if self.size is not None and self.size % 2 == 0:
            raise ValueError(f"size must be odd, got {self.size}")
        return self


class GaussianBlurKernel(Degradation):
    name = "gaussian-blur-kernel"
    description = "Convolution with a (possibly anisotropic) Gaussian kernel (deblurring)."
    Options = GaussianBlurOptions
    severities = {
        1: {"sigma": 0.5},
        2: {"sigma": 1.0},
        3: {"sigma": 1.5},
        4: {"sigma": 2.0},
        5: {"sigma": 3.0},
    }

    def kernel(self, device=None, dtype=torch.float32) -> torch.Tensor:
        o = self.options
        size = o.size or auto_size(max(o.sigma, o.sigma_y or 0.0))
        return gaussian_kernel(size, o.sigma, o.sigma_y, o.angle, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernel(x.device, x.dtype))


class MotionBlurOptions(DegradationOptions):
    length: float = Field(7.0, ge=1, le=61, description="streak length in pixels")
    angle: float = Field(0.0, ge=-180, le=180, description="direction in degrees (0 = horizontal)")
    size: int | None = Field(
        None, ge=1, le=101, description="odd kernel side; default fits the streak"
    )

    @model_validator(mode="after")
    def _odd(self) -> MotionBlurOptions:
        if self.size is not None and self.size % 2 == 0:
            raise ValueError(f"size must be odd, got {self.size}")
        return self


class MotionBlurKernel(Degradation):
    name = "motion-blur-kernel"
    description = "Convolution with a straight, anti-aliased motion streak (camera shake)."
    Options = MotionBlurOptions
    severities = {
        1: {"length": 3},
        2: {"length": 5},
        3: {"length": 7},
        4: {"length": 11},
        5: {"length": 15},
    }

    def kernel(self, device=None, dtype=torch.float32) -> torch.Tensor:
        o = self.options
        size = o.size or (2 * math.ceil(o.length / 2) + 1)
        return motion_kernel(size, o.length, o.angle, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernel(x.device, x.dtype))
