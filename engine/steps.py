"""The one step kernel: x0 prediction, the DDIM step (any eta), the DDPM ancestral step (fixed or
learned variance) and DDIM inversion.

A step from ``t`` to ``t_prev`` is fixed by two alpha_bar values.  Its coefficients are computed
once, in float64 on the CPU, by :func:`transitions` (a whole grid, vectorised: what the sampler
does once per run) or :func:`transition` (one step), and cast once to the images' dtype and
device as 0-dim tensors.  The tensor functions below only apply them.  The sampler loop, ODEdit's
inversion and decoding, SHRED's rendering and any plugin call this kernel and nothing else, so the
diffusers parity tests (tests/test_steps.py, tests/test_parity.py) check the code production runs.

The arithmetic is that of diffusers' ``DDIMScheduler.step`` / ``DDPMScheduler.step`` and of
guided-diffusion's ``GaussianDiffusion`` (respaced grids included: ``beta = 1 - abar_t /
abar_prev``).  The step into the data (``t_prev = -1``) is ``abar_prev = 1.0``; DDPM adds no
noise there.  A step whose ``abar_t`` is 1 starts from the data (the first step of an
inversion): its x0 is ``x_t`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

KINDS = ("ddim", "ddpm")
VARIANCE_KINDS = ("fixed_small", "fixed_large", "learned_range")
#: diffusers clamps the posterior variance at this value before taking its log
_MIN_VARIANCE = 1e-20


@dataclass(frozen=True, slots=True, eq=False)
class Transition:
    """The coefficients of one step ``abar_t -> abar_prev``, ready to multiply images.

    Tensors are 0-dim, in the images' dtype and on their device (float64 arithmetic, cast once).

    * x0 prediction: ``sqrt_abar_t``, ``sqrt_one_minus_abar_t``;
    * mean: ``mean_x0 * x0 + mean_rest * r`` with ``r = eps`` (DDIM: ``sqrt(abar_prev)`` and
      ``sqrt(1 - abar_prev - std^2)``) or ``r = x_t`` (DDPM: the posterior coefficients);
    * ``std`` / ``variance``: the noise scale added and the variance mean-shift guidance scales
      by; ``None`` for a learned variance, which comes from the model's output through
      ``log_beta`` and ``log_floor`` (iDDPM's learned range).  ``std`` is 0 where no noise is
      added (DDIM with eta 0, DDPM's final step).
    """

    kind: str
    abar_t: float
    abar_prev: float
    sqrt_abar_t: torch.Tensor
    sqrt_one_minus_abar_t: torch.Tensor
    mean_x0: torch.Tensor
    mean_rest: torch.Tensor
    std: torch.Tensor | None
    variance: torch.Tensor | None
    log_beta: torch.Tensor | None
    log_floor: torch.Tensor | None
    #: the step into the data (``abar_prev = 1``)
    final: bool
    #: the step starts at the data (``abar_t = 1``: inversion's first step)
    from_data: bool
    #: whether the step adds noise (its ``std`` is not 0)
    noisy: bool


@dataclass
class StepResult:
    """One step: ``x_prev = mean + std * noise``.

    ``x0`` is the (clipped) prediction, ``eps`` the noise direction the DDIM mean used (re-derived
    from ``x0`` or the model's), ``std``/``variance`` the step's noise scale and variance
    (0-dim for fixed variances, images' shape for a learned one).
    """

    x_prev: torch.Tensor
    x0: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    variance: torch.Tensor
    eps: torch.Tensor


# --- coefficients, once per run ------------------------------------------------------------------


def _beta_tilde(a_t: torch.Tensor, a_p: torch.Tensor) -> torch.Tensor:
    """Posterior variance ``beta_tilde = beta * (1 - abar_prev) / (1 - abar_t)``."""
    return (1 - a_t / a_p) * (1 - a_p) / (1 - a_t)


def _coefficients(
    a_t: torch.Tensor,
    a_p: torch.Tensor,
    above: torch.Tensor,
    kind: str,
    eta: float,
    variance: str,
) -> dict[str, torch.Tensor | None]:
    """Every coefficient for vectors of alpha_bar pairs, in float64 (``above`` NaN = none)."""
    if kind not in KINDS:
        raise ValueError(f"unknown step kind {kind!r}; choose one of {', '.join(KINDS)}")
    from_data = a_t >= 1.0
    out: dict[str, torch.Tensor | None] = {
        "sqrt_abar_t": a_t.sqrt(),
        "sqrt_one_minus_abar_t": (1 - a_t).sqrt(),
        "std": None,
        "variance": None,
        "log_beta": None,
        "log_floor": None,
    }
    if kind == "ddim":
        # Song et al. Eq. 16; eta = 1 gives the DDPM posterior std; 0 at abar_prev = 1
        radicand = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        sigma = torch.tensor(eta, dtype=torch.float64) * radicand.clamp_min(0).sqrt()
        std = torch.where(from_data, torch.zeros_like(sigma), sigma)
        out["mean_x0"] = a_p.sqrt()
        out["mean_rest"] = (1 - a_p - std * std).clamp_min(0).sqrt()
        out["std"] = std
        return out
    if variance not in VARIANCE_KINDS:
        raise ValueError(
            f"unknown DDPM variance {variance!r}; choose one of {', '.join(VARIANCE_KINDS)}"
        )
    final = a_p >= 1.0
    beta = 1 - a_t / a_p
    out["mean_x0"] = beta * a_p.sqrt() / (1 - a_t)
    out["mean_rest"] = (1 - a_p) * (1 - beta).sqrt() / (1 - a_t)
    # beta_tilde with guided-diffusion's fix at the final step (where it is 0): the posterior
    # variance of the step above; without one, diffusers' clamp at 1e-20
    has_above = final & ~above.isnan()
    floor = _beta_tilde(a_t, a_p).clamp_min(_MIN_VARIANCE)
    clipped = torch.where(has_above, _beta_tilde(above, a_t), floor)
    if variance == "fixed_small":
        out["variance"] = _beta_tilde(a_t, a_p).clamp_min(0)
    elif variance == "fixed_large":
        out["variance"] = torch.where(has_above, clipped, beta)
    else:
        out["log_beta"], out["log_floor"] = beta.log(), clipped.log()
    return out


def transitions(
    alphas_cumprod: torch.Tensor,
    grid: Sequence[int],
    *,
    kind: str = "ddim",
    eta: float = 0.0,
    variance: str = "fixed_small",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[Transition]:
    """The transitions of a descending grid of ORIGINAL timesteps, step ``i`` from ``grid[i]``
    to ``grid[i + 1]`` (to the data, ``abar = 1``, after the last point).

    Computed once in float64 on the CPU (``alphas_cumprod`` stays there), then cast once to
    ``dtype`` on ``device``.  For DDPM the final step's clipped log variance uses the grid step
    above it, as guided-diffusion's respaced tables do.
    """
    acp = alphas_cumprod.detach().to("cpu", torch.float64)
    ts = torch.as_tensor(list(grid), dtype=torch.long)
    one = torch.ones(1, dtype=torch.float64)
    abar = acp[ts]
    prev = torch.cat([abar[1:], one])
    above = torch.cat([torch.full((1,), float("nan"), dtype=torch.float64), abar[:-1]])
    return _build(abar, prev, above, kind, eta, variance, dtype, device)


def transitions_between(
    abar_from: Sequence[float],
    abar_to: Sequence[float],
    *,
    kind: str = "ddim",
    eta: float = 0.0,
    variance: str = "fixed_small",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[Transition]:
    """Transitions between pairs of alpha_bar values (python floats), built in one go.

    A pair going up (``abar_to < abar_from``) with ``eta = 0`` is a DDIM inversion step (use the
    model's eps at the start and ``rederive=False``); ``abar = 1`` is the data.
    """
    if len(abar_from) != len(abar_to):
        raise ValueError(f"{len(abar_from)} start values for {len(abar_to)} targets")
    a = torch.tensor([float(v) for v in abar_from], dtype=torch.float64)
    p = torch.tensor([float(v) for v in abar_to], dtype=torch.float64)
    none = torch.full_like(a, float("nan"))
    return _build(a, p, none, kind, eta, variance, dtype, device)


def transition(
    abar_t: float,
    abar_prev: float = 1.0,
    *,
    kind: str = "ddim",
    eta: float = 0.0,
    variance: str = "fixed_small",
    abar_above: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Transition:
    """One transition between two alpha_bar values (python floats, float64 precision).

    ``abar_prev < abar_t`` goes up: with ``eta = 0`` and the model's eps that is DDIM inversion.
    ``abar_above`` matters only for a DDPM final step (see :func:`transitions`).  diffusers'
    DDIM final step maps to ``abar_prev = 1.0`` (``set_alpha_to_one``) or ``alphas_cumprod[0]``.
    The default ``abar_prev`` suits callers that only predict x0 at ``abar_t``.
    """

    def vec(value: float | None) -> torch.Tensor:
        return torch.tensor([float("nan") if value is None else float(value)], dtype=torch.float64)

    (out,) = _build(
        vec(abar_t), vec(abar_prev), vec(abar_above), kind, eta, variance, dtype, device
    )
    return out


def _build(
    abar: torch.Tensor,
    prev: torch.Tensor,
    above: torch.Tensor,
    kind: str,
    eta: float,
    variance: str,
    dtype: torch.dtype,
    device: torch.device | str,
) -> list[Transition]:
    coef = _coefficients(abar, prev, above, kind, float(eta), variance)
    # cast once, on the CPU (bit-exact elementwise arithmetic; no float64 on the device)
    cast = {k: None if v is None else v.to(dtype) for k, v in coef.items()}
    final = prev >= 1.0
    zero = torch.zeros_like(abar, dtype=dtype)
    if kind == "ddim":  # mean shift scales by std^2 in the images' dtype
        cast["variance"] = cast["std"] * cast["std"]
        noisy = cast["std"] > 0
    elif cast["variance"] is not None:  # DDPM fixed: the noise is sqrt of the cast variance
        cast["std"] = torch.where(final, zero, cast["variance"].sqrt())
        noisy = cast["std"] > 0
    else:  # learned variance: std from the model's output, no noise at the final step
        cast["std"] = zero
        noisy = ~final
    n = abar.shape[0]
    moved = {k: [None] * n if v is None else list(v.to(device=device)) for k, v in cast.items()}
    learned = kind == "ddpm" and coef["variance"] is None
    rows = zip(abar.tolist(), prev.tolist(), final.tolist(), noisy.tolist(), strict=True)
    return [
        Transition(
            kind=kind,
            abar_t=a,
            abar_prev=p,
            sqrt_abar_t=moved["sqrt_abar_t"][i],
            sqrt_one_minus_abar_t=moved["sqrt_one_minus_abar_t"][i],
            mean_x0=moved["mean_x0"][i],
            mean_rest=moved["mean_rest"][i],
            std=None if learned and not f else moved["std"][i],
            variance=moved["variance"][i],
            log_beta=moved["log_beta"][i],
            log_floor=moved["log_floor"][i],
            final=f,
            from_data=a >= 1.0,
            noisy=z,
        )
        for i, (a, p, f, z) in enumerate(rows)
    ]


# --- the tensor functions --------------------------------------------------------------------------


def clamp_x0(x0: torch.Tensor, clip: bool | float | None) -> torch.Tensor:
    """Clamp to ``[-c, c]``: ``True`` means ``c = 1``, ``False``/``None`` no clamp."""
    if clip is None or clip is False:
        return x0
    bound = 1.0 if clip is True else float(clip)
    if bound <= 0:
        raise ValueError(f"clip bound must be positive, got {clip}")
    return x0.clamp(-bound, bound)


def predict_x0(
    x_t: torch.Tensor, eps: torch.Tensor, tr: Transition, clip: bool | float | None = True
) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)``, then clamped to ``[-c, c]``.

    ``clip=True`` clamps to [-1, 1] (the project's default, as in diffusers' ``clip_sample`` and
    guided-diffusion's ``clip_denoised``); a float ``c`` clamps to ``[-c, c]``; ``False`` keeps
    the raw prediction (the exact inverse of :func:`eps_from_x0`).  From the data it is ``x_t``.
    """
    if tr.from_data:
        return clamp_x0(x_t, clip)
    x0 = (x_t - tr.sqrt_one_minus_abar_t * eps) / tr.sqrt_abar_t
    return clamp_x0(x0, clip)


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, tr: Transition) -> torch.Tensor:
    """``eps = (x_t - sqrt(abar_t) * x0) / sqrt(1 - abar_t)``: the noise that makes ``x0`` exact.

    Re-derives the DDIM direction from a clipped, thresholded or guided ``x0`` (GLIDE,
    guided-diffusion, BIRD).
    """
    return (x_t - tr.sqrt_abar_t * x0) / tr.sqrt_one_minus_abar_t


def moments(
    tr: Transition,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor | None,
    variance_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step rule for a given ``x0``: ``(mean, std, variance)``.

    * DDIM (Song et al. Eq. 12): ``mean = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps``,
      ``std = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))``;
    * DDPM: the posterior mean of q(x_prev | x_t, x0), ``beta = 1 - abar_t / abar_prev``::

        mean = beta sqrt(abar_prev) / (1 - abar_t) x0 + (1 - abar_prev) sqrt(1 - beta) / (1 - abar_t) x_t

      with variance ``beta_tilde = beta (1 - abar_prev) / (1 - abar_t)`` (fixed_small), ``beta``
      (fixed_large; ``beta_tilde`` of the step above at the final step) or, learned,
      ``exp(frac log(beta) + (1 - frac) log(beta_tilde_c))`` with ``frac = (v + 1) / 2`` for the
      model's ``variance_values`` ``v`` (iDDPM); ``std = sqrt(variance)``, 0 at the final step.

    ``eps`` is the DDIM direction (pass :func:`eps_from_x0` for a changed ``x0``); DDPM ignores it.
    """
    if tr.kind == "ddim":
        mean = tr.mean_x0 * x0 + tr.mean_rest * eps
    else:
        mean = tr.mean_x0 * x0 + tr.mean_rest * x_t
    if tr.variance is not None:
        return mean, tr.std, tr.variance
    if variance_values is None:
        raise ValueError("variance 'learned_range' needs the model's variance_values")
    frac = (variance_values + 1) / 2
    variance = (frac * tr.log_beta + (1 - frac) * tr.log_floor).exp()
    return mean, (tr.std if tr.std is not None else variance.sqrt()), variance


def add_noise(
    mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor | None, tr: Transition
) -> torch.Tensor:
    """``mean + std * noise`` where the step adds noise, else ``mean``."""
    if not tr.noisy:
        return mean
    if noise is None:
        raise ValueError("this step adds noise (std > 0): pass `noise` (standard normal)")
    return mean + std * noise


def step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    tr: Transition,
    *,
    noise: torch.Tensor | None = None,
    clip: bool | float | None = True,
    x0_rule: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rederive: bool = True,
    variance_values: torch.Tensor | None = None,
) -> StepResult:
    """One whole step from ``x_t`` and the model's ``eps`` (what the loop does without hooks)::

        x0     = x0_rule(predict_x0(x_t, eps, clip))
        eps'   = eps_from_x0(x_t, x0) if rederive else eps        (DDIM's direction)
        mean, std, variance = moments(x0, eps')
        x_prev = mean + std * noise

    ``rederive=True`` re-derives the direction from the clipped ``x0`` as guided-diffusion's
    ``ddim_sample`` and BIRD do (diffusers with ``use_clipped_model_output=True``); ``False`` is
    diffusers' own default and DDIM inversion (``eta = 0``, ``clip=False``, a transition
    upwards).  With eta = 1 and ``rederive`` DDIM is exactly the DDPM posterior step.  ``noise``
    (standard normal, like ``x_t``) is needed whenever the step adds noise.
    """
    x0 = predict_x0(x_t, eps, tr, clip)
    if x0_rule is not None:
        x0 = x0_rule(x0)
    ddim = tr.kind == "ddim" and not tr.from_data
    direction = eps_from_x0(x_t, x0, tr) if rederive and ddim else eps
    mean, std, variance = moments(tr, x_t, x0, direction, variance_values)
    return StepResult(
        x_prev=add_noise(mean, std, noise, tr),
        x0=x0,
        mean=mean,
        std=std,
        variance=variance,
        eps=direction,
    )
