"""Upsamplers: bringing a restored image from the prior's resolution to the output's.

A prior restores at its own small size (64 px for the offline prior, 256-512 for hub models);
the user's photo is usually larger.  An upsampler is the one place that decides how the missing
resolution is made: interpolation, or a super-resolution network.  Plugins register them with
``registry.add_upsampler(instance)``; recipes (``[output] upsampler``), ``guidestack run
--upsampler`` and the faces pipeline pick them by name.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

#: interpolation modes :func:`resize` understands
MODES = ("bicubic", "bilinear", "nearest", "area")


class Upsampler:
    """Base class: ``name``, ``description``; ``__call__(images, size)`` and, for upsamplers
    that need something not every install has, ``unavailable()``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def unavailable(self) -> str | None:
        """Why this upsampler cannot run here (what to install), or ``None`` if it can."""
        return None

    def __call__(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``images`` ``[N, C, h, w]`` in [-1, 1] brought to ``size = (H, W)``, in [-1, 1]."""
        raise NotImplementedError


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """``images`` ``[N, C, h, w]`` resized to ``size``: antialiased when shrinking, clamped to
    [-1, 1] (bicubic overshoots at edges); unchanged when the size already matches."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode not in MODES:
        raise ValueError(f"unknown interpolation {mode!r}; one of {', '.join(MODES)}")
    kwargs = {}
    if mode in ("bicubic", "bilinear"):
        shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
        kwargs = {"align_corners": False, "antialias": shrinking}
    out = F.interpolate(images, size=tuple(size), mode=mode, **kwargs)
    return out.clamp(-1.0, 1.0)
