"""A low-noise expert around any prior: a learned Gaussian denoiser takes over at small t.

The Gaussian prior treats everything beyond its components as white noise of variance ``s2``, so
its samples and restorations keep that floor as grain.  A denoiser trained on natural images knows
what fine detail looks like; it replaces the prior's noise prediction at low noise levels.

At ORIGINAL timestep ``t`` (``a = sqrt(abar_t)``, ``b = sqrt(1 - abar_t)``) the image
``y = x_t / a = x0 + sigma_t n`` carries noise ``sigma_t = b / a`` in the x0 scale.  The expert is
told an effective level that also counts the prior's white floor (``floor = s2``) as noise to
remove, and its estimate ``x0_hat = D(y, sigma_eff)`` gives ``eps_expert = (x_t - a x0_hat) / b``:

- ``floor_schedule = "constant"``: ``sigma_eff = sqrt(sigma_t^2 + floor)``, the grain counted at
  full strength down to t = 0;
- ``"decaying"`` (default): ``sigma_eff = sqrt(sigma_t^2 + floor (sigma_t / sigma_hi)^2)``.  Once
  the expert removes the grain from x0, a DDIM step puts it into eps, and at the next level it is
  left in ``y`` scaled by ``sigma_t / sigma_hi``: the grain shrinks with the noise, and a constant
  floor over-smooths the last steps (measured: docs/prior.md).  Both agree at ``t_hi``.

  The hand-over is a smoothstep in ``sigma_t``: weight 1 for
``t <= t_lo``, 0 for ``t >= t_hi`` (there the output IS the prior's, bit for bit), and
``eps = w eps_expert + (1 - w) eps_prior`` between, continuous with a continuous derivative.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from guidestack.engine.prior import Prior, PriorOutput

#: hand-over range ``(t_lo, t_hi)`` in original timesteps of a 1000-step linear schedule: the
#: expert alone up to t_lo, the prior alone from t_hi (measured: docs/prior.md)
DEFAULT_HANDOVER = (50, 150)
#: how the floor variance counts below the hand-over start (module docstring)
FLOOR_SCHEDULES = ("decaying", "constant")


class Denoiser(Protocol):
    """A Gaussian denoiser in the prior's [-1, 1] scale: ``denoiser(y, sigma) -> x0``, ``sigma`` [N]."""

    name: str
    max_sigma: float

    def __call__(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def smoothstep_weight(sigma: float, sigma_lo: float, sigma_hi: float) -> float:
    """The expert's weight: 1 below ``sigma_lo``, 0 above ``sigma_hi``, ``1 - (3s^2 - 2s^3)`` between."""
    s = min(max((sigma - sigma_lo) / (sigma_hi - sigma_lo), 0.0), 1.0)
    return 1.0 - s * s * (3.0 - 2.0 * s)


class LowNoiseExpert(Prior):
    """``prior`` with ``expert`` taking over below the hand-over range (module docstring).

    ``handover = (t_lo, t_hi)``: original timesteps, ``0 <= t_lo < t_hi < T``.  ``floor_variance``
    is the variance counted as noise on top of ``sigma_t^2``; ``None`` takes the prior's ``s2``
    (Gaussian priors) or 0; ``floor_schedule`` is ``"decaying"`` or ``"constant"``.  ``kind`` stays the prior's, so recipes' ``[per_prior.<kind>]`` tables
    keep applying; ``name`` is ``<prior>+<expert>`` unless given.
    """

    #: compute each sample on its own, the expert and the wrapped prior (a batch then equals
    #: single runs exactly); ``False`` (default) runs them batched, and the engine's
    #: ``deterministic`` mode calls the whole prior one sample at a time instead
    batch_invariant: bool = False

    def __init__(
        self,
        prior: Prior,
        expert: nn.Module,
        *,
        handover: tuple[int, int] = DEFAULT_HANDOVER,
        floor_variance: float | None = None,
        floor_schedule: str = "decaying",
        name: str | None = None,
    ):
        super().__init__()
        self.prior = prior
        self.expert = expert
        self.image_size = prior.image_size
        self.channels = prior.channels
        self.learned_variance = prior.learned_variance
        self.kind = prior.kind
        self.name = name or f"{prior.name}+{getattr(expert, 'name', 'expert')}"
        self.register_buffer("alphas_cumprod", prior.alphas_cumprod.detach().clone())
        if floor_variance is None:
            s2 = getattr(prior, "s2", None)
            floor_variance = float(s2) if s2 is not None else 0.0
        if not (math.isfinite(floor_variance) and floor_variance >= 0):
            raise ValueError(f"floor_variance must be finite and >= 0, got {floor_variance}")
        self.floor_variance = float(floor_variance)
        if floor_schedule not in FLOOR_SCHEDULES:
            raise ValueError(
                f"floor_schedule must be one of {FLOOR_SCHEDULES}, got {floor_schedule!r}"
            )
        self.floor_schedule = floor_schedule
        t_lo, t_hi = (int(v) for v in handover)
        top = self.num_train_timesteps
        if not 0 <= t_lo < t_hi < top:
            raise ValueError(f"handover must be (t_lo, t_hi) with 0 <= t_lo < t_hi < {top}")
        self.handover = (t_lo, t_hi)
        self.sigma_lo, self.sigma_hi = self.sigma_t(t_lo), self.sigma_t(t_hi)
        limit = getattr(expert, "max_sigma", math.inf)
        if self.effective_sigma(t_hi) > limit:
            allowed = max((t for t in range(top) if self.effective_sigma(t) <= limit), default=None)
            raise ValueError(
                f"the expert is trained up to sigma {limit:.4f} ([-1, 1] scale) but the hand-over "
                f"ends at t = {t_hi} (effective sigma {self.effective_sigma(t_hi):.4f}); with "
                f"floor_variance {self.floor_variance:g} t_hi must be <= {allowed}"
            )

    # ------------------------------------------------------------------------------ schedule

    def _abar(self, t: int) -> float:
        return float(self.alphas_cumprod[t])

    def sigma_t(self, t: int) -> float:
        """Noise level of ``y = x_t / sqrt(abar_t)`` in the x0 scale: ``sqrt((1 - abar) / abar)``."""
        abar = self._abar(t)
        return math.sqrt((1.0 - abar) / abar)

    def effective_sigma(self, t: int) -> float:
        """What the expert is told: ``sqrt(sigma_t^2 + floor)``, the floor scaled by
        ``(sigma_t / sigma_hi)^2`` below ``t_hi`` for the ``decaying`` schedule."""
        sigma = self.sigma_t(t)
        floor = self.floor_variance
        if self.floor_schedule == "decaying" and sigma < self.sigma_hi:
            floor *= (sigma / self.sigma_hi) ** 2
        return math.sqrt(sigma * sigma + floor)

    def weight(self, t: int) -> float:
        """The expert's share of eps at timestep ``t`` (1 below the hand-over, 0 above)."""
        return smoothstep_weight(self.sigma_t(t), self.sigma_lo, self.sigma_hi)

    # ----------------------------------------------------------------------------- denoiser

    def expert_eps(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The expert's own noise prediction ``(x_t - a D(x_t / a, sigma_eff)) / b`` at every t."""
        steps = self.timestep_list(t, x_t.shape[0])
        return self._expert_rows(x_t, steps, range(x_t.shape[0]))

    def _expert_rows(self, x_t: torch.Tensor, steps: list[int], rows) -> torch.Tensor:
        """Expert eps for the samples ``rows`` of ``x_t`` (stacked in that order)."""
        rows = list(rows)
        a = torch.tensor([math.sqrt(self._abar(steps[i])) for i in rows], dtype=torch.float64)
        b = torch.tensor([math.sqrt(1.0 - self._abar(steps[i])) for i in rows], dtype=torch.float64)
        sig = torch.tensor([self.effective_sigma(steps[i]) for i in rows], dtype=torch.float64)
        view = (-1, 1, 1, 1)
        a_x, b_x = (v.to(x_t.device, x_t.dtype).view(view) for v in (a, b))
        sig = sig.to(x_t.device, torch.float32)
        picked = x_t[rows]
        y = picked / a_x
        if self.batch_invariant:
            x0 = torch.cat(
                [self.expert(y[j : j + 1].clone(), sig[j : j + 1]) for j in range(len(rows))]
            )
        else:
            x0 = self.expert(y, sig)
        return (picked - a_x * x0.to(x_t.dtype)) / b_x

    def _prior(self, x_t: torch.Tensor, steps: list[int]) -> PriorOutput:
        """The wrapped prior's output, sample by sample when this wrapper is batch invariant."""
        ts = torch.as_tensor(steps, device=x_t.device)
        if not self.batch_invariant or getattr(self.prior, "batch_invariant", False):
            return self.prior(x_t, ts)
        outs = [self.prior(x_t[i : i + 1].clone(), ts[i : i + 1]) for i in range(x_t.shape[0])]
        values = [o.variance_values for o in outs]
        return PriorOutput(
            eps=torch.cat([o.eps for o in outs]),
            variance_values=None if values[0] is None else torch.cat(values),
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> PriorOutput:
        """``w eps_expert + (1 - w) eps_prior`` per sample; exactly the prior's where ``w = 0``."""
        steps = self.timestep_list(t, x_t.shape[0])
        weights = [self.weight(s) for s in steps]
        rows = [i for i, w in enumerate(weights) if w > 0.0]
        if rows and all(w == 1.0 for w in weights) and not self.learned_variance:
            return PriorOutput(eps=self._expert_rows(x_t, steps, rows))
        out = self._prior(x_t, steps)
        if not rows:
            return out
        expert = self._expert_rows(x_t, steps, rows)
        w = torch.tensor([weights[i] for i in rows], dtype=x_t.dtype, device=x_t.device)
        w = w.view(-1, 1, 1, 1)
        eps = out.eps.clone()
        eps[rows] = w * expert + (1.0 - w) * out.eps[rows]
        return PriorOutput(eps=eps, variance_values=out.variance_values)

    def describe(self) -> dict:
        info = self.prior.describe()
        info.update(super().describe())
        describe_expert = getattr(self.expert, "describe", None)
        info["expert"] = {
            **(describe_expert() if callable(describe_expert) else {}),
            "handover": list(self.handover),
            "floor_variance": self.floor_variance,
            "floor_schedule": self.floor_schedule,
        }
        return info
