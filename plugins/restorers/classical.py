"""Classical restorers on kornia: cheap, training-free first estimates of a clean face.

They stand in for the learned restorers of the papers (PGDiff's MSE network, DifFace's SwinIR)
when no weights are available: smoothing removes noise and blocking, down-up resampling removes
high-frequency damage.  None depends on ``t``, so the engine computes each once per run.
"""

from __future__ import annotations

import kornia
import torch.nn.functional as F

from guidestack.engine.restorer import Restorer

from .options import (
    BilateralOptions,
    GaussianBlurOptions,
    IdentityOptions,
    MedianOptions,
    ResampleOptions,
)


def _odd(n: int) -> int:
    return n if n % 2 == 1 else n + 1


class IdentityRestorer(Restorer):
    name = "identity"
    description = "Returns the input unchanged (the observation itself is the target)."
    Options = IdentityOptions

    def restore(self, y, x_t=None, t=None):
        return y


class GaussianBlurRestorer(Restorer):
    name = "gaussian-blur"
    description = (
        "Gaussian smoothing (removes noise and fine damage; keeps low-frequency semantics)."
    )
    Options = GaussianBlurOptions

    def restore(self, y, x_t=None, t=None):
        s = self.options.sigma
        k = _odd(max(3, int(round(4 * s)) * 2 + 1))
        return kornia.filters.gaussian_blur2d(y, (k, k), (s, s), border_type="reflect")


class BilateralRestorer(Restorer):
    name = "bilateral"
    description = "Edge-preserving bilateral smoothing."
    Options = BilateralOptions

    def restore(self, y, x_t=None, t=None):
        o = self.options
        k = _odd(o.kernel_size)
        return kornia.filters.bilateral_blur(
            y, (k, k), o.sigma_color, (o.sigma_space, o.sigma_space)
        )


class MedianRestorer(Restorer):
    name = "median"
    description = "Median filtering (removes impulse noise and thin scratches)."
    Options = MedianOptions

    def restore(self, y, x_t=None, t=None):
        k = _odd(self.options.kernel_size)
        return kornia.filters.median_blur(y, (k, k))


class ResampleRestorer(Restorer):
    name = "resample"
    description = "Down-sample by a factor with antialiasing, then up-sample back (keeps only coarse structure)."
    Options = ResampleOptions

    def restore(self, y, x_t=None, t=None):
        f = self.options.factor
        h, w = y.shape[-2:]
        small = F.interpolate(y, size=(max(1, h // f), max(1, w // f)), mode="area")
        mode = self.options.mode
        kwargs = {"align_corners": False} if mode in ("bicubic", "bilinear") else {}
        return F.interpolate(small, size=(h, w), mode=mode, **kwargs)


CLASSICAL_RESTORERS: tuple[type[Restorer], ...] = (
    IdentityRestorer,
    GaussianBlurRestorer,
    BilateralRestorer,
    MedianRestorer,
    ResampleRestorer,
)
