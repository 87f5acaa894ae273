"""Blur operators: convolution of every channel with a normalised kernel (Gaussian, motion).

Kernels are built with torch operations, so a kernel whose shape parameters are tensors stays
differentiable in them (the blind operator in :mod:`.blind` reuses :func:`gaussian_kernel`).
Two boundaries:

* ``reflect`` (default): borders are reflected, as a camera sees more scene outside the frame,
  not black; the convolution runs through FFTs of the padded image (:func:`blur`) or
  ``conv2d`` (``method = "conv"``, the same numbers to float rounding).  Linear, with an adjoint
  by autograd, but no closed-form pseudo-inverse;
* ``circular``: the image wraps around, so ``H`` is diagonal in the Fourier basis with the
  kernel's spectrum ``S``.  As in DDRM's and DDNM's SVD operators, frequencies where
  ``|S| < rcond * max|S|`` are cut from ``H`` itself (a Gaussian's spectrum never reaches 0 but
  falls below float precision), which makes ``H^+`` (``conj(S) / |S|^2`` on the kept
  frequencies) exact and bounded by ``1 / rcond``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Degradation
from .options import GaussianBlurOptions, MotionBlurOptions
from .options import KernelBlurOptions as KernelBlurOptions  # re-exported


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


def blur_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """:func:`blur` with one shared kernel ``[k, k]`` through ``conv2d`` on the reflect-padded
    image (each channel on its own, one sample at a time as :func:`blur` does)."""
    c, h, w = x.shape[1:]
    size = kernel.shape[-1]
    pad = size // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    weight = kernel.to(x.dtype).expand(c, 1, size, size)
    out = []
    for i in range(x.shape[0]):
        xi = F.pad(x[i : i + 1], (pad, pad, pad, pad), mode=mode) if pad else x[i : i + 1]
        out.append(F.conv2d(xi, weight, groups=c))
    return torch.cat(out)


def circular_spectrum(kernel: torch.Tensor, h: int, w: int, rcond: float) -> torch.Tensor:
    """``rfft2`` spectrum ``[h, w // 2 + 1]`` of circular correlation with ``kernel`` (as
    ``conv2d`` correlates), with the frequencies below ``rcond`` times the peak set to 0."""
    size = kernel.shape[-1]
    if size > min(h, w):
        raise ValueError(f"a {size}x{size} kernel does not fit a {h}x{w} image")
    c = size // 2
    placed = F.pad(kernel.flip(0, 1), (0, w - size, 0, h - size))
    placed = torch.roll(placed, shifts=(-c, -c), dims=(0, 1))
    spectrum = torch.fft.rfft2(placed)
    magnitude = spectrum.abs()
    return torch.where(magnitude >= rcond * magnitude.max(), spectrum, torch.zeros_like(spectrum))


def kernel_width(kernels: torch.Tensor) -> torch.Tensor:
    """Per-kernel isotropic width ``sqrt(E|r - r_mean|^2 / 2)``: the sigma of a Gaussian with the
    same second moment (``[N]`` for ``[N, k, k]``)."""
    k = kernels / kernels.sum(dim=(-2, -1), keepdim=True)
    yy, xx = _grid(k.shape[-1], k.device, k.dtype)
    my = (k * yy).sum(dim=(-2, -1), keepdim=True)
    mx = (k * xx).sum(dim=(-2, -1), keepdim=True)
    second = (k * ((yy - my) ** 2 + (xx - mx) ** 2)).sum(dim=(-2, -1))
    return (second / 2).sqrt()


class _KernelBlur(Degradation):
    """A fixed kernel (``kernel()``) with the boundary and method of :class:`KernelBlurOptions`."""

    linear = True

    def kernel(self, device=None, dtype=torch.float32) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        real = torch.float64 if x.dtype == torch.float64 else torch.float32
        key = (h, w, str(x.device), real)
        cached = getattr(self, "_spectra", None)
        if cached is None:
            cached = self._spectra = {}
        if key not in cached:
            kernel = self.kernel(dtype=torch.float64)
            spectrum = circular_spectrum(kernel, h, w, self.options.rcond)
            cached[key] = spectrum.to(device=x.device, dtype=torch.complex128).to(
                torch.complex64 if real == torch.float32 else torch.complex128
            )
        return cached[key]

    def _circular(self, x: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        real = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        out = torch.fft.irfft2(torch.fft.rfft2(x.to(real)) * spectrum, s=x.shape[-2:])
        return out.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.boundary == "circular":
            return self._circular(x, self._spectrum(x))
        kernel = self.kernel(x.device, x.dtype)
        if self.options.method == "conv":
            return blur_conv(x, kernel)
        return blur(x, kernel)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self.options.boundary == "circular":
            return self._circular(y, self._spectrum(y).conj())
        return super().adjoint(y)

    @property
    def has_pinv(self) -> bool:
        return self.options.boundary == "circular"

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``conj(S) / |S|^2`` on the frequencies ``H`` keeps (circular boundary only)."""
        if self.options.boundary != "circular":
            raise NotImplementedError(
                f"degradation '{self.name}' has a pseudo-inverse only with boundary = 'circular'"
            )
        spectrum = self._spectrum(y)
        power = spectrum.abs().pow(2)
        inverse = torch.where(
            power > 0, spectrum.conj() / power.clamp_min(1e-30), torch.zeros_like(spectrum)
        )
        return self._circular(y, inverse)


class GaussianBlurKernel(_KernelBlur):
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


class MotionBlurKernel(_KernelBlur):
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
