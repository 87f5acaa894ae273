"""The prior: a denoiser and its noise schedule, behind one small interface.

Every backend (closed-form Gaussian, diffusers UNet, later ADM checkpoints) subclasses
:class:`Prior`, so the sampler never knows which one it drives.  A prior is an ``nn.Module`` so
``.to(device, dtype)`` moves it as torch users expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PriorOutput:
    """What one denoiser call gives.

    ``eps`` is the noise prediction (same shape as ``x_t``).  ``variance_values`` is ``None`` for
    fixed-variance models; for learned-variance models (guided-diffusion, 6 output channels) it is
    the raw interpolation output ``v`` in [-1, 1] of iDDPM's "learned range" parameterisation.
    """

    eps: torch.Tensor
    variance_values: torch.Tensor | None = None


class Prior(nn.Module):
    """A pretrained (or closed-form) diffusion prior over images in [-1, 1].

    Subclasses set ``alphas_cumprod`` (float64 buffer of length ``num_train_timesteps``),
    ``image_size``, ``channels``, ``learned_variance`` and implement :meth:`forward`.
    Timesteps are ORIGINAL training indices ``0..T-1`` whatever grid a run visits.
    """

    image_size: int
    channels: int
    learned_variance: bool = False
    #: short human-readable name used in run reports
    name: str = "prior"
    #: which backend made it (``gaussian``, ``diffusers``...); recipes can key defaults on it
    kind: str = "prior"

    alphas_cumprod: torch.Tensor

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        """Keep ``alphas_cumprod`` in float64 on the CPU whatever ``.to()`` does to the rest:
        step sizes need the precision, and MPS has no float64."""
        schedule = self._buffers.get("alphas_cumprod")
        module = super()._apply(fn, recurse)
        if schedule is not None:
            self._buffers["alphas_cumprod"] = schedule.detach().to("cpu", torch.float64)
        return module

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor
    ) -> PriorOutput:  # pragma: no cover - abstract
        """Predict the noise in ``x_t`` at ORIGINAL timesteps ``t`` (long tensor of shape [N])."""
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-able summary for run reports."""
        return {
            "name": self.name,
            "kind": self.kind,
            "image_size": self.image_size,
            "channels": self.channels,
            "learned_variance": self.learned_variance,
            "num_train_timesteps": self.num_train_timesteps,
        }


def linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """The DDPM linear-beta schedule used by every public face model (float64)."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)
