"""Operators that change resolution or colour: identity, downsampling, grayscale.

Each has its adjoint and pseudo-inverse in closed form: area downsampling by k is block means
(``H H^T = I / k^2``, so ``H^+`` repeats each low-resolution pixel over its block), bicubic
downsampling is separable (``H x = R X C^T`` with 1-D matrices built from the resize itself, so
``H^+ y = R^+ Y (C^+)^T``), grayscale is a weighted channel sum (``H^+ y = w y / |w|^2``).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from guidestack.engine.context import Observation

from .base import Degradation
from .options import DownsampleOptions, GrayscaleOptions, IdentityOptions

#: ITU-R BT.601 luma weights; they sum to 1, so the map commutes with the [-1, 1] scaling
LUMA = (0.299, 0.587, 0.114)
#: the plain channel mean (PGDiff's lightness, DDNM's colorization operator)
MEAN = (1 / 3, 1 / 3, 1 / 3)


class Identity(Degradation):
    name = "identity"
    description = "H(x) = x: plain inversion of the prior (SHRED's reconstruction experiment)."
    Options = IdentityOptions
    linear = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def coisometry(self) -> float:
        return 1.0

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y


class Downsample(Degradation):
    """``H(x)`` is the low-resolution image (area: mean of k x k blocks).

    The public API keeps a low-resolution photo at its own size (``measurement_side``): a 16x16
    face stays 16x16 for ``factor = 4`` on a 64x64 prior, and :meth:`measure` returns it
    unchanged.  An observation at the prior's size (a test, the web UI's resized input) is taken
    as the bicubic upsampling the CLI used to make of it and inverted by least squares with the
    separable 1-D upsampling matrices (condition number ~1.4); that round trip is inexact where
    the upsampling was clamped to [-1, 1] (up to 0.175 on high-contrast input), which is why the
    API keeps y unresized.  With ``observation = "full"`` the input is taken as a full-resolution
    picture and downsampled like ``x0``.
    """

    name = "downsample"
    description = (
        "Downsampling by an integer factor (super-resolution); compares at low resolution."
    )
    Options = DownsampleOptions
    severities = {
        1: {"factor": 2},
        2: {"factor": 4},
        3: {"factor": 8},
        4: {"factor": 16},
        5: {"factor": 32},
    }
    linear = True

    def low_size(self, x: torch.Tensor) -> tuple[int, int]:
        k = self.options.factor
        return (max(1, round(x.shape[-2] / k)), max(1, round(x.shape[-1] / k)))

    def output_side(self, side: int) -> int:
        return max(1, round(side / self.options.factor))

    def measurement_side(self, side: int) -> int:
        return self.output_side(side) if self.options.observation == "upsampled" else side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.low_size(x)
        if self.options.mode == "area":
            return F.interpolate(x, size=size, mode="area")
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)

    def measure(self, y: torch.Tensor, side: int | None = None) -> torch.Tensor:
        side = int(y.shape[-1]) if side is None else side
        if y.shape[-1] == self.output_side(side) and y.shape[-1] != side:
            return y  # already the low-resolution photo: exact
        if self.options.observation == "full":
            return self(y)
        (h, w), (nh, nw) = self.low_size(y), y.shape[-2:]
        rows = _unupsample(h, nh, y.device)
        cols = _unupsample(w, nw, y.device)
        out = torch.einsum("kh,nchw,lw->nckl", rows, y.to(rows.dtype), cols)
        return out.to(y.dtype)

    # --- linear algebra -----------------------------------------------------------------

    _input: tuple[int, int] | None = None

    def prepare(self, observation: Observation) -> None:
        self._input = (int(observation.image.shape[-2]), int(observation.image.shape[-1]))

    def _high(self, y: torch.Tensor) -> tuple[int, int]:
        """The images' size for measurements ``y``: the prepared one, else ``k`` times ``y``'s."""
        k = self.options.factor
        if self._input is not None and self.low_size(torch.empty(1, 1, *self._input)) == tuple(
            y.shape[-2:]
        ):
            return self._input
        return int(y.shape[-2]) * k, int(y.shape[-1]) * k

    @property
    def coisometry(self) -> float | None:
        return 1.0 / self.options.factor**2 if self.options.mode == "area" else None

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        k = self.options.factor
        if self.options.mode == "area":
            if self._high(y) != (y.shape[-2] * k, y.shape[-1] * k):
                return self.adjoint_at(y, (*y.shape[:2], *self._high(y)))
            return _repeat(y, k) / (k * k)
        rows, cols = _resize_pair(self._high(y), y.shape[-2:], y.device, y.dtype)
        return torch.einsum("kh,nckl,lw->nchw", rows, y, cols)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Area: each low-resolution pixel repeated over its k x k block (exact when the side is
        a multiple of k, as the prior's is).  Bicubic: ``R^+ Y (C^+)^T``."""
        if self.options.mode == "area":
            k = self.options.factor
            if self._high(y) != (y.shape[-2] * k, y.shape[-1] * k):
                raise ValueError(
                    f"area downsampling by {k} has a block pseudo-inverse only for sides that "
                    f"are multiples of {k}; got images of {self._high(y)}"
                )
            return _repeat(y, k)
        rows, cols = _resize_pair(self._high(y), y.shape[-2:], y.device, y.dtype, pinv=True)
        return torch.einsum("hk,nckl,wl->nchw", rows, y, cols)


def _repeat(y: torch.Tensor, k: int) -> torch.Tensor:
    return y.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def _resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]``: 1-D antialiased bicubic resize as a matrix (float64), built by resizing
    the identity, so it is exactly the map ``F.interpolate`` applies along each axis."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, 1, n_in)
    out = F.interpolate(eye, size=(1, n_out), mode="bicubic", align_corners=False, antialias=True)
    return out.view(n_in, n_out).T.contiguous()


@lru_cache(maxsize=32)
def _resize_matrices(high: tuple[int, int], low: tuple[int, int], pinv: bool):
    rows, cols = _resize_matrix(high[0], low[0]), _resize_matrix(high[1], low[1])
    if pinv:
        return torch.linalg.pinv(rows), torch.linalg.pinv(cols)
    return rows, cols


def _resize_pair(high, low, device, dtype, pinv: bool = False):
    """The 1-D matrices of a bicubic downsample ``high -> low`` (``[low, high]``) or of its
    pseudo-inverse (``[high, low]``), float64 once, cast to the images' dtype and device."""
    rows, cols = _resize_matrices(tuple(map(int, high)), tuple(map(int, low)), pinv)
    return rows.to(device=device, dtype=dtype), cols.to(device=device, dtype=dtype)


def _unupsample(low: int, high: int, device: torch.device) -> torch.Tensor:
    """Pseudo-inverse ``[low, high]`` of 1-D bicubic upsampling ``low -> high`` as the CLI does it
    (``align_corners=False``, antialias; the 2-D resize is separable)."""
    dtype = torch.float32 if device.type == "mps" else torch.float64
    return torch.linalg.pinv(_resize_matrix(low, high)).to(device=device, dtype=dtype)


class Grayscale(Degradation):
    """One channel ``sum_c w_c x_c``; ``H^+ y = w y / |w|^2`` puts the gray back on the RGB
    channels in proportion to their weights (equal ones for ``mean``)."""

    name = "grayscale"
    description = "Gray image of an RGB image, one channel (colorization)."
    Options = GrayscaleOptions
    linear = True
    channels = 3

    def prepare(self, observation: Observation) -> None:
        self.channels = int(observation.image.shape[1])

    def _weights(self, like: torch.Tensor) -> torch.Tensor:
        w = LUMA if self.options.weights == "bt601" else MEAN
        return torch.tensor(w, device=like.device, dtype=like.dtype).view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x
        if x.shape[1] != 3:
            raise ValueError(f"grayscale expects 1 or 3 channels, got {x.shape[1]}")
        return (x * self._weights(x)).sum(dim=1, keepdim=True)

    def measure(self, y: torch.Tensor, side: int | None = None) -> torch.Tensor:
        return self(y)

    @property
    def coisometry(self) -> float:
        if self.channels == 1:
            return 1.0
        w = LUMA if self.options.weights == "bt601" else MEAN
        return float(sum(v * v for v in w))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.channels == 1 else y * self._weights(y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self.adjoint(y) / self.coisometry
