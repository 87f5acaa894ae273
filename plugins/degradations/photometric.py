"""Deterministic appearance damage: JPEG compression, contrast loss, pixelation, desaturation."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .base import Degradation
from .linear import LUMA
from .options import ContrastOptions, DesaturateOptions, JpegOptions, PixelateOptions


def pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip (4:2:0, PIL/libjpeg) of each sample; not differentiable."""
    out = []
    for img in x:
        u8 = ((img.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        arr = u8.permute(1, 2, 0).numpy()
        mode = "L" if arr.shape[2] == 1 else "RGB"
        pil = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        back = np.asarray(Image.open(buf).convert(mode), dtype=np.float32)
        back = back[..., None] if back.ndim == 2 else back
        out.append(torch.from_numpy(back).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


class Jpeg(Degradation):
    """``forward`` is kornia's differentiable JPEG (``jpeg_codec_differentiable``: rounding made
    smooth, so SHRED can optimise through it); ``simulate`` uses a real codec by default, as a
    real JPEG is what a user would hand in.  The two agree up to the rounding surrogate."""

    name = "jpeg"
    description = "JPEG compression at a quality (differentiable surrogate in forward)."
    Options = JpegOptions
    severities = {
        1: {"quality": 60},
        2: {"quality": 35},
        3: {"quality": 20},
        4: {"quality": 10},
        5: {"quality": 4},
    }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        q = torch.full((x.shape[0],), float(self.options.quality), device=x.device, dtype=x.dtype)
        u = ((x + 1) / 2).clamp(0, 1)
        return jpeg_codec_differentiable(u, q) * 2 - 1

    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.codec == "kornia":
            return super().simulate(x)
        return pil_jpeg(x, self.options.quality)


class Contrast(Degradation):
    """``y = m + c (x - m)`` with ``m`` the sample's mean: a washed-out, faded picture."""

    name = "contrast"
    description = "Contrast reduction towards the image's mean (faded photos)."
    Options = ContrastOptions
    severities = {
        1: {"factor": 0.8},
        2: {"factor": 0.6},
        3: {"factor": 0.4},
        4: {"factor": 0.25},
        5: {"factor": 0.12},
    }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return m + self.options.factor * (x - m)


class Pixelate(Degradation):
    """Block averages shown as flat squares (mosaic): area downsampling then nearest upsampling,
    at the input's size, so unlike ``downsample`` the observation needs no resizing."""

    name = "pixelate"
    description = "Mosaic of flat blocks of a given side (censoring, low-res thumbnails)."
    Options = PixelateOptions
    severities = {
        1: {"block": 2},
        2: {"block": 3},
        3: {"block": 4},
        4: {"block": 6},
        5: {"block": 8},
    }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.options.block
        size = (max(1, round(x.shape[-2] / b)), max(1, round(x.shape[-1] / b)))
        small = F.interpolate(x, size=size, mode="area")
        return F.interpolate(small, size=x.shape[-2:], mode="nearest")


class Desaturate(Degradation):
    """Blend towards the BT.601 luma, keeping three channels; severity 5 is full grayscale, the
    graded form of ``grayscale`` (which returns one channel for colorization)."""

    name = "desaturate"
    description = "Colour loss, partial to full grayscale, keeping RGB (faded/gray photos)."
    Options = DesaturateOptions
    severities = {
        1: {"amount": 0.3},
        2: {"amount": 0.5},
        3: {"amount": 0.7},
        4: {"amount": 0.85},
        5: {"amount": 1.0},
    }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            return x
        w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        luma = (x * w).sum(dim=1, keepdim=True)
        a = self.options.amount
        return (1 - a) * x + a * luma
