"""Pixel fidelity: PSNR and SSIM (kornia.metrics), one value per image of a batch.

Images are in [-1, 1], the project's convention, so PSNR's peak-to-peak range is 2 and SSIM is
computed on ``(x + 1) / 2`` in [0, 1] with Wang et al.'s constants ``C1 = (0.01)^2``,
``C2 = (0.03)^2``, an 11x11 Gaussian window (sigma 1.5) and no padding ("valid"), averaged over
channels and positions: the original definition (and ``skimage``'s with ``gaussian_weights``).
"""

from __future__ import annotations

import kornia.metrics
import torch

from .common import check_pair

#: SSIM window side (Wang et al. 2004)
SSIM_WINDOW = 11


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """``[N]`` PSNR in dB of each image: ``10 log10(range^2 / MSE)``; ``inf`` for equal images."""
    check_pair(x, y, "psnr")
    return torch.stack(
        [
            kornia.metrics.psnr(x[i].double(), y[i].double(), max_val=data_range)
            for i in range(x.shape[0])
        ]
    ).to(x.dtype)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """``[N]`` mean SSIM of each image (in [-1, 1]); needs images of at least ``window`` pixels."""
    check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim needs images of at least {window}x{window}, got {tuple(x.shape)}")
    a = (x.double() + 1.0) / 2.0
    b = (y.double() + 1.0) / 2.0
    values = [
        kornia.metrics.ssim(a[i : i + 1], b[i : i + 1], window, max_val=1.0, padding="valid").mean()
        for i in range(x.shape[0])
    ]
    return torch.stack(values).to(x.dtype)
