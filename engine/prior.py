"""The prior: a denoiser and its noise schedule, behind one small interface.

Every backend (closed-form Gaussian, diffusers UNet, later ADM checkpoints) subclasses
:class:`Prior`, so the sampler never knows which one it drives.  A prior is an ``nn.Module`` so
``.to(device, dtype)`` moves it as torch users expect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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

    @property
    def device(self) -> torch.device:
        """Where the denoiser runs: its first parameter or buffer other than the schedule
        (which stays on the CPU); the CPU for a prior that holds no tensor."""
        for tensor in self.parameters():
            return tensor.device
        for name, tensor in self.named_buffers():
            if not name.endswith("alphas_cumprod"):
                return tensor.device
        return torch.device("cpu")

    def timestep_list(self, t: torch.Tensor | int, n: int) -> list[int]:
        """``t`` (one integer timestep, or one per sample) as ``n`` python ints, checked: priors
        that compute per sample in float64 (the Gaussian prior, the low-noise expert) need them
        as indices into ``alphas_cumprod``."""
        t = torch.as_tensor(t).reshape(-1)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {n}")
        values = [int(v) for v in t.tolist()]
        top = self.num_train_timesteps
        if any(v < 0 or v >= top for v in values):
            raise ValueError(f"timesteps must lie in [0, {top - 1}], got {values}")
        return values

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


class EpsFunctionPrior(Prior):
    """Any noise predictor as a prior: ``eps(x_t, t)`` plus its ``alphas_cumprod``.

    ``eps`` may be a plain function or an ``nn.Module`` (then ``.to()`` moves it with the prior
    and :attr:`Prior.device` follows it).  It receives ``x_t`` ``[N, C, H, W]`` and ORIGINAL
    timesteps ``t`` (a long tensor ``[N]``) and returns the noise prediction, a tuple ``(eps,
    variance_values)`` for a learned-range variance (``learned_variance=True``), or anything with
    a ``.sample`` attribute (a diffusers model output).
    """

    kind = "function"

    def __init__(
        self,
        eps: Callable[[torch.Tensor, torch.Tensor], Any],
        alphas_cumprod: torch.Tensor | Sequence[float],
        image_size: int,
        channels: int = 3,
        *,
        name: str | None = None,
        learned_variance: bool = False,
    ):
        super().__init__()
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().reshape(-1)
        if abar.numel() < 1 or not bool(((abar > 0) & (abar <= 1)).all()):
            raise ValueError("alphas_cumprod must be a non-empty sequence of values in (0, 1]")
        if bool((abar[1:] > abar[:-1]).any()):
            raise ValueError("alphas_cumprod must not increase with t (noisier at larger t)")
        self.eps_fn = eps
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.learned_variance = bool(learned_variance)
        self.name = name or getattr(eps, "__name__", type(eps).__name__)
        self.register_buffer("alphas_cumprod", abar)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> PriorOutput:
        out = self.eps_fn(x_t, t)
        if hasattr(out, "sample"):
            out = out.sample
        if isinstance(out, tuple):
            eps, values = out
            return PriorOutput(eps=eps, variance_values=values)
        if self.learned_variance and out.shape[1] == 2 * self.channels:
            return PriorOutput(eps=out[:, : self.channels], variance_values=out[:, self.channels :])
        return PriorOutput(eps=out)
