"""Elastic deformation (kornia's ``elastic_transform2d``) with a field drawn once per sample."""

from __future__ import annotations

import math

import torch

from .options import ElasticOptions
from .stochastic import Stochastic, uniform


class Elastic(Stochastic):
    """A smooth random warp.  The uniform noise field is drawn once; kornia smooths it and scales
    it by ``alpha``, which is set at the draw so the RMS displacement is ``displacement`` of the
    side whatever the resolution (a severity means the same at 64 and 512 pixels).
    Differentiable in the image (bilinear ``grid_sample``)."""

    name = "elastic"
    description = "Smooth random elastic warp, RMS displacement as a fraction of the side."
    Options = ElasticOptions
    severities = {
        1: {"displacement": 0.01},
        2: {"displacement": 0.02},
        3: {"displacement": 0.035},
        4: {"displacement": 0.05},
        5: {"displacement": 0.07},
    }

    def _kernel(self, x: torch.Tensor) -> tuple[tuple[int, int], tuple[float, float]]:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        sy, sx = self.options.smoothness * h, self.options.smoothness * w

        def odd(s: float, side: int) -> int:
            k = 2 * max(1, math.ceil(2.5 * s)) + 1
            return min(k, side if side % 2 else side - 1)

        return (odd(sy, h), odd(sx, w)), (sy, sx)

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        from kornia.filters import gaussian_blur2d

        noise = uniform((1, 2, *x.shape[-2:]), generator, x.float()) * 2 - 1
        kernel, sigma = self._kernel(x)
        smooth = gaussian_blur2d(noise, kernel, sigma)
        rms = smooth.pow(2).mean().sqrt().clamp_min(1e-12)
        # kornia's displacement is in normalised coordinates: the side spans 2
        alpha = 2.0 * self.options.displacement / rms
        return {"noise": noise, "alpha": alpha.reshape(1)}

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        from kornia.geometry.transform import elastic_transform2d

        kernel, sigma = self._kernel(x)
        a = float(drawn["alpha"])
        return elastic_transform2d(
            x,
            drawn["noise"].to(x.dtype),
            kernel_size=kernel,
            sigma=sigma,
            alpha=(a, a),
            padding_mode="reflection",
        )
