"""Sensor noise: additive Gaussian noise and Poisson (shot) noise, drawn once per sample."""

from __future__ import annotations

import torch

from .options import GaussianNoiseOptions, PoissonNoiseOptions
from .stochastic import Stochastic, normal


class GaussianNoise(Stochastic):
    """``y = clip(x + sigma * n)``; the noise field ``n`` is drawn once, so ``H`` is a fixed
    differentiable shift (the clip passes gradients inside [-1, 1])."""

    name = "gaussian-noise"
    description = "Additive white Gaussian noise, sigma in 8-bit levels."
    Options = GaussianNoiseOptions
    severities = {
        1: {"sigma": 5.0},
        2: {"sigma": 10.0},
        3: {"sigma": 20.0},
        4: {"sigma": 35.0},
        5: {"sigma": 50.0},
    }

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"noise": normal(x.shape, generator, x)}

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        sigma = 2.0 * self.options.sigma / 255.0  # [-1, 1] spans 2
        return (x + sigma * drawn["noise"].to(x.dtype)).clamp(-1.0, 1.0)


class PoissonNoise(Stochastic):
    """Shot noise: ``u' = Poisson(peak * u) / peak`` with ``u = (x + 1) / 2``.  The counts depend
    on the image, so the draw stores the residual ``u' - u`` for the first image seen and
    ``forward`` adds it (a fixed, differentiable map; re-bind generators for a new image)."""

    name = "poisson-noise"
    description = "Poisson (shot) noise for a given photon count at full brightness."
    Options = PoissonNoiseOptions
    severities = {
        1: {"peak": 200.0},
        2: {"peak": 60.0},
        3: {"peak": 20.0},
        4: {"peak": 8.0},
        5: {"peak": 3.0},
    }

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        peak = self.options.peak
        rate = ((x.float() + 1) / 2).clamp(0, 1) * peak
        counts = torch.poisson(rate.to(generator.device), generator=generator)
        residual = counts.to(rate.device) / peak - rate / peak
        return {"residual": residual.to(x.dtype)}

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        return (x + 2.0 * drawn["residual"].to(x.dtype)).clamp(-1.0, 1.0)
