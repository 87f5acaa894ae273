"""Operators that discard pixels: the user's mask (or one from a file), a box, random pixels.

Each multiplies by the known-pixel indicator, so ``H(x)`` keeps the image's shape with zeros
(mid-gray) where pixels are missing; :attr:`mask` follows the engine's convention (1 = missing).
``H`` is an orthogonal projection, so ``H^T = H^+ = H`` (the measurement space is the known
pixels: ``H(H^+ y) = y`` for every ``y`` that is zero where pixels are missing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from guidestack.engine.context import Observation
from guidestack.engine.errors import InputError
from guidestack.io.images import read_image, to_square

from .base import Degradation
from .options import BoxMaskOptions, MaskOptions, PixelSubsampleOptions


def _fit(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` at ``like``'s size; a pixel is missing if ANY pixel it covers is missing."""
    if mask.shape[-2:] == like.shape[-2:]:
        return mask.to(like.dtype)
    if mask.shape[-1] > like.shape[-1]:
        return (F.interpolate(mask.float(), size=like.shape[-2:], mode="area") > 0).to(like.dtype)
    return F.interpolate(mask.float(), size=like.shape[-2:], mode="nearest").to(like.dtype)


class _Masking(Degradation):
    """Shared arithmetic: ``H(x) = x * (1 - mask)``, a projection (its own adjoint and
    pseudo-inverse)."""

    _mask: torch.Tensor | None = None
    linear = True

    @property
    def mask(self) -> torch.Tensor | None:
        return self._mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mask is None:
            raise RuntimeError(f"degradation '{self.name}' used before prepare()")
        known = 1.0 - _fit(self._mask, x).to(x.device)
        if known.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"mask batch {known.shape[0]} does not match images {x.shape[0]}")
        return x * known

    def measure(self, y: torch.Tensor, side: int | None = None) -> torch.Tensor:
        # the observation's missing pixels hold anything (white, noise): zero them like H does
        return self(y)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self(y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self(y)


class Mask(_Masking):
    name = "mask"
    description = (
        "Free-form inpainting mask: the observation's (--mask) or a file's (white = missing)."
    )
    Options = MaskOptions

    @classmethod
    def needs_mask(cls, options: BaseModel) -> bool:
        return getattr(options, "path", None) is None and not getattr(options, "optional", False)

    def prepare(self, observation: Observation) -> None:
        image = observation.image
        if self.options.path is not None:
            loaded = read_image(self.options.path, kind="mask").tensor
            mask = to_square(loaded, int(image.shape[-1]), kind="mask")[0][None]
            self._mask = (mask >= 0.5).to(device=image.device, dtype=image.dtype)
            return
        if observation.mask is None and self.options.optional:
            self._mask = torch.zeros_like(image[:, :1])
            return
        if observation.mask is None:
            raise InputError(
                "degradation 'mask' needs a mask (white = missing): pass --mask FILE or FOLDER, "
                "give the operator a path, or use 'box-mask' for a fixed box"
            )
        self._mask = (observation.mask >= 0.5).to(image.dtype)


def _centred(side: float) -> dict:
    return {"box": ((1 - side) / 2, (1 - side) / 2, side, side)}


class BoxMask(_Masking):
    name = "box-mask"
    description = "A missing rectangle given in fractions of the image (SHRED's centred square)."
    Options = BoxMaskOptions
    severities = {
        1: _centred(0.2),
        2: _centred(0.3),
        3: _centred(0.4),
        4: _centred(0.5),
        5: _centred(0.6),
    }

    def prepare(self, observation: Observation) -> None:
        image = observation.image
        n, _, h, w = image.shape
        top, left, height, width = self.options.box
        mask = torch.zeros(n, 1, h, w, dtype=image.dtype, device=image.device)
        r0, c0 = round(top * h), round(left * w)
        mask[:, :, r0 : r0 + max(1, round(height * h)), c0 : c0 + max(1, round(width * w))] = 1.0
        self._mask = mask


class PixelSubsample(_Masking):
    """Compressed sensing as in SHRED: keep a uniformly random subset of pixel locations (all
    channels of a kept pixel).  The pattern depends on ``seed`` and the image size only, so every
    sample of a batch and every run sees the same pattern."""

    name = "pixel-subsample"
    description = (
        "Keeps a random fraction of the pixels (compressed sensing), fixed pattern per seed."
    )
    Options = PixelSubsampleOptions
    severities = {
        1: {"ratio": 0.5},
        2: {"ratio": 0.25},
        3: {"ratio": 0.1},
        4: {"ratio": 0.05},
        5: {"ratio": 0.01},
    }

    def prepare(self, observation: Observation) -> None:
        image = observation.image
        _, _, h, w = image.shape
        g = torch.Generator().manual_seed(self.options.seed)
        keep_count = max(1, round(self.options.ratio * h * w))
        order = torch.randperm(h * w, generator=g)[:keep_count]
        missing = torch.ones(h * w)
        missing[order] = 0.0
        self._mask = missing.view(1, 1, h, w).to(device=image.device, dtype=image.dtype)
