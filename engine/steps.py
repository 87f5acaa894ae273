"""Step rules as pure tensor functions: x0 prediction, DDIM, DDIM inversion, DDPM ancestral.

The arithmetic is that of diffusers' ``DDIMScheduler.step`` / ``DDPMScheduler.step`` and of
guided-diffusion's ``GaussianDiffusion``, but nothing here holds state: a step is a function of
``x_t``, the model output and two ``alpha_bar`` values, so any grid (respaced, shifted start,
SHRED jumps, repeats at one ``t``) uses the same code.

``alpha_bar`` arguments (``abar_t``, ``abar_prev``, ...) are python floats or tensors that
broadcast against the images; a 1-D tensor of length N is taken per sample (viewed as
``[N, 1, 1, 1]``).  Coefficients are computed in float64 (float32 on MPS, which has no float64)
and cast to the images' dtype, on the images' device.  The step into the data (``t_prev = -1``)
is ``abar_prev = 1.0``; DDPM adds no noise there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Scalar = float | torch.Tensor

VARIANCE_KINDS = ("fixed_small", "fixed_large", "learned_range")
#: diffusers clamps the posterior variance at this value before taking its log
_MIN_VARIANCE = 1e-20


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _scalar(value: Scalar, like: torch.Tensor | None = None) -> torch.Tensor:
    """``value`` as a high-precision tensor on ``like``'s device, per-sample shaped if 1-D."""
    if like is None:
        device = value.device if isinstance(value, torch.Tensor) else torch.device("cpu")
    else:
        device = like.device
    dtype = _work_dtype(device)
    if isinstance(value, torch.Tensor):
        out = value.to(device=device, dtype=dtype)
    else:  # never through the default dtype: a python float must keep its 53 bits
        out = torch.tensor(value, device=device, dtype=dtype)
    if like is not None and out.ndim == 1 and like.ndim > 1 and out.shape[0] != 1:
        if out.shape[0] != like.shape[0]:
            raise ValueError(f"{out.shape[0]} per-sample values for a batch of {like.shape[0]}")
        out = out.view(-1, *([1] * (like.ndim - 1)))
    return out


def _cast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coef.to(dtype=like.dtype)


def clamp_x0(x0: torch.Tensor, clip: bool | float | None) -> torch.Tensor:
    """Clamp to ``[-c, c]``: ``True`` means ``c = 1``, ``False``/``None`` no clamp."""
    if clip is None or clip is False:
        return x0
    bound = 1.0 if clip is True else float(clip)
    if bound <= 0:
        raise ValueError(f"clip bound must be positive, got {clip}")
    return x0.clamp(-bound, bound)


def predict_x0(
    x_t: torch.Tensor, eps: torch.Tensor, abar_t: Scalar, clip: bool | float | None = True
) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)``, then clamped to ``[-c, c]``.

    ``clip=True`` clamps to [-1, 1] (the project's default, as in diffusers' ``clip_sample`` and
    guided-diffusion's ``clip_denoised``); a float ``c`` clamps to ``[-c, c]``; ``False`` keeps
    the raw prediction (the exact inverse of :func:`eps_from_x0`).
    """
    a = _scalar(abar_t, x_t)
    x0 = (x_t - _cast((1 - a).sqrt(), x_t) * eps) / _cast(a.sqrt(), x_t)
    return clamp_x0(x0, clip)


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar_t: Scalar) -> torch.Tensor:
    """``eps = (x_t - sqrt(abar_t) * x0) / sqrt(1 - abar_t)``: the noise that makes ``x0`` exact.

    Used to re-derive the DDIM direction from a clipped or guided ``x0``.
    """
    a = _scalar(abar_t, x_t)
    return (x_t - _cast(a.sqrt(), x_t) * x0) / _cast((1 - a).sqrt(), x_t)


def sigma_ddim(abar_t: Scalar, abar_prev: Scalar, eta: Scalar = 1.0) -> torch.Tensor:
    """DDIM's noise scale (Song et al. Eq. 16), a float64 tensor (float32 on MPS)::

        sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))

    ``eta = 1`` gives the DDPM posterior std ``sqrt(beta_tilde)``; 0 at ``abar_prev = 1``.  The
    radicand is clamped at 0 against rounding.
    """
    like = next((v for v in (abar_t, abar_prev, eta) if isinstance(v, torch.Tensor)), None)
    a_t, a_p, e = (_scalar(v, like) for v in (abar_t, abar_prev, eta))
    radicand = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
    return e * radicand.clamp_min(0).sqrt()


@dataclass
class DDIMResult:
    """One DDIM step: ``x_prev = mean + std * noise``.

    ``mean`` is the deterministic part, ``std = eta * sigma_ddim`` (broadcastable, images'
    dtype), ``x0`` the (clipped) prediction and ``eps`` the noise used for the direction term.
    """

    x_prev: torch.Tensor
    x0: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    eps: torch.Tensor


def ddim_mean_std(
    x0: torch.Tensor, eps: torch.Tensor, abar_t: Scalar, abar_prev: Scalar, eta: Scalar = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM's deterministic part and noise scale for a given ``x0`` and direction ``eps``::

        std  = eta * sigma_ddim(abar_t, abar_prev)
        mean = sqrt(abar_prev) * x0 + sqrt(max(1 - abar_prev - std**2, 0)) * eps

    For a guided or clipped ``x0`` pass ``eps = eps_from_x0(x_t, x0, abar_t)`` (GLIDE /
    guided-diffusion); ``std`` is returned in ``x0``'s dtype, shaped to broadcast against it.
    """
    a_p = _scalar(abar_prev, x0)
    std = sigma_ddim(_scalar(abar_t, x0), a_p, _scalar(eta, x0))
    direction = (1 - a_p - std * std).clamp_min(0).sqrt()
    mean = _cast(a_p.sqrt(), x0) * x0 + _cast(direction, x0) * eps
    return mean, _cast(std, x0)


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    abar_t: Scalar,
    abar_prev: Scalar,
    eta: Scalar = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool | float | None = True,
    use_clipped_eps: bool = True,
) -> DDIMResult:
    """One DDIM step ``t -> t_prev`` (Song et al. Eq. 12), diffusers' ``DDIMScheduler.step``::

        x0     = predict_x0(x_t, eps, abar_t, clip=clip_x0)
        eps'   = eps_from_x0(x_t, x0, abar_t) if use_clipped_eps else eps
        std    = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
        mean   = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev - std**2) * eps'
        x_prev = mean + std * noise

    ``use_clipped_eps=True`` (default) re-derives the direction from the clipped ``x0`` as
    guided-diffusion's ``ddim_sample`` and BIRD do, i.e. diffusers with
    ``use_clipped_model_output=True``; ``False`` is diffusers' own default.  Without clipping both
    agree.  With ``eta = 1`` and the default this is exactly the DDPM posterior step.
    diffusers' final step maps to ``abar_prev = 1.0`` (``set_alpha_to_one=True``) or
    ``abar_prev = alphas_cumprod[0]`` (``False``).  ``noise`` (standard normal, like ``x_t``) is
    needed whenever ``std`` is non-zero.
    """
    x0 = predict_x0(x_t, eps, abar_t, clip=clip_x0)
    direction_eps = eps_from_x0(x_t, x0, abar_t) if use_clipped_eps else eps
    mean, std = ddim_mean_std(x0, direction_eps, abar_t, abar_prev, eta)
    x_prev = _add_noise(mean, std, noise)
    return DDIMResult(x_prev=x_prev, x0=x0, mean=mean, std=std, eps=direction_eps)


def ddim_invert_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    abar_t: Scalar,
    abar_next: Scalar,
    clip_x0: bool | float | None = False,
) -> torch.Tensor:
    """Deterministic DDIM inversion (eta 0) from ``t`` up to a noisier ``t_next``::

        x0     = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)      (not clipped by default)
        x_next = sqrt(abar_next) * x0 + sqrt(1 - abar_next) * eps

    This is diffusers' ``DDIMInverseScheduler.step`` with ``clip_sample=False`` (its "current"
    alpha_bar is ``abar_t``, its target ``abar_next``).  ``eps`` should be evaluated at ``(x_t, t)``.
    """
    x0 = predict_x0(x_t, eps, abar_t, clip=clip_x0)
    a_n = _scalar(abar_next, x_t)
    return _cast(a_n.sqrt(), x_t) * x0 + _cast((1 - a_n).sqrt(), x_t) * eps


def _is_final(abar_prev: torch.Tensor) -> torch.Tensor:
    return abar_prev >= 1.0


def _beta(a_t: torch.Tensor, a_p: torch.Tensor) -> torch.Tensor:
    """The (respaced) step's ``beta = 1 - abar_t / abar_prev``."""
    return 1 - a_t / a_p


def _beta_tilde(a_t: torch.Tensor, a_p: torch.Tensor) -> torch.Tensor:
    """Posterior variance ``beta_tilde = beta * (1 - abar_prev) / (1 - abar_t)``."""
    return _beta(a_t, a_p) * (1 - a_p) / (1 - a_t)


def _clipped_beta_tilde(
    a_t: torch.Tensor, a_p: torch.Tensor, abar_above: Scalar | None
) -> torch.Tensor:
    """``beta_tilde`` with guided-diffusion's fix at the final step (where it is 0).

    There guided-diffusion uses the posterior variance of the step above, ``beta_tilde(abar_above
    -> abar_t)``; without ``abar_above`` we clamp at 1e-20 as diffusers does.
    """
    variance = _beta_tilde(a_t, a_p)
    floor = variance.clamp_min(_MIN_VARIANCE)
    if abar_above is None:
        return floor
    a_up = _scalar(abar_above, a_t if a_t.ndim > 0 else None).to(a_t.device, a_t.dtype)
    return torch.where(_is_final(a_p), _beta_tilde(a_up, a_t), floor)


def ddpm_variance(
    kind: str,
    abar_t: Scalar,
    abar_prev: Scalar,
    variance_values: torch.Tensor | None = None,
    abar_above: Scalar | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(variance, log_variance)`` of the reverse step ``t -> t_prev``, as guided-diffusion.

    With ``beta = 1 - abar_t / abar_prev`` (respaced grids included) and ``beta_tilde = beta *
    (1 - abar_prev) / (1 - abar_t)``; ``beta_tilde_c`` is ``beta_tilde`` except at the final step
    (``abar_prev == 1``, where ``beta_tilde = 0``): there it is ``beta_tilde(abar_above ->
    abar_t)``, the posterior variance of the previous (noisier) grid step, which is
    guided-diffusion's ``posterior_log_variance_clipped`` (``abar_above=None``: clamp at 1e-20,
    diffusers' choice).

    * ``fixed_small``:   variance ``beta_tilde`` (0 at the final step), log ``log(beta_tilde_c)``
    * ``fixed_large``:   variance ``beta`` (``beta_tilde_c`` at the final step), log of it
    * ``learned_range``: ``log = frac * log(beta) + (1 - frac) * log(beta_tilde_c)``,
      ``frac = (v + 1) / 2`` for the model's ``variance_values`` ``v`` in [-1, 1]; variance
      ``exp(log)`` (iDDPM).

    Results are high-precision tensors (``variance_values``' dtype for learned_range), shaped to
    broadcast against the images.
    """
    if kind not in VARIANCE_KINDS:
        raise ValueError(
            f"unknown DDPM variance {kind!r}; choose one of {', '.join(VARIANCE_KINDS)}"
        )
    a_t = _scalar(abar_t, variance_values)
    a_p = _scalar(abar_prev, variance_values)
    beta = _beta(a_t, a_p)
    clipped = _clipped_beta_tilde(a_t, a_p, abar_above)
    if kind == "fixed_small":
        return _beta_tilde(a_t, a_p).clamp_min(0), clipped.log()
    if kind == "fixed_large":
        large = torch.where(_is_final(a_p), clipped, beta) if abar_above is not None else beta
        return large, large.log()
    if variance_values is None:
        raise ValueError("variance 'learned_range' needs the model's variance_values")
    frac = (variance_values + 1) / 2
    log_variance = frac * _cast(beta.log(), variance_values) + (1 - frac) * _cast(
        clipped.log(), variance_values
    )
    return log_variance.exp(), log_variance


def ddpm_posterior(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    abar_t: Scalar,
    abar_prev: Scalar,
    abar_above: Scalar | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The posterior q(x_prev | x_t, x0) as ``(mean, variance, log_variance)``::

        beta     = 1 - abar_t / abar_prev
        mean     = beta * sqrt(abar_prev) / (1 - abar_t) * x0
                   + (1 - abar_prev) * sqrt(1 - beta) / (1 - abar_t) * x_t
        variance = beta * (1 - abar_prev) / (1 - abar_t)                  (beta_tilde)
        log_variance = log(beta_tilde), at the final step guided-diffusion's clipped value
                       (see :func:`ddpm_variance`)

    ``variance`` and ``log_variance`` are high-precision tensors that broadcast against ``x_t``.
    """
    a_t, a_p = _scalar(abar_t, x_t), _scalar(abar_prev, x_t)
    beta = _beta(a_t, a_p)
    coef_x0 = beta * a_p.sqrt() / (1 - a_t)
    coef_xt = (1 - a_p) * (1 - beta).sqrt() / (1 - a_t)
    mean = _cast(coef_x0, x_t) * x0 + _cast(coef_xt, x_t) * x_t
    variance = _beta_tilde(a_t, a_p).clamp_min(0)
    return mean, variance, _clipped_beta_tilde(a_t, a_p, abar_above).log()


def ddpm_mean_variance(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    abar_t: Scalar,
    abar_prev: Scalar,
    kind: str = "fixed_small",
    variance_values: torch.Tensor | None = None,
    abar_above: Scalar | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's reverse step ``(mean, variance)`` for a given (possibly guided) ``x0``.

    ``mean`` is the posterior mean of :func:`ddpm_posterior`, ``variance`` that of
    :func:`ddpm_variance` in the images' dtype (0 at the final step for ``fixed_small``; use
    :func:`ddpm_step` or its ``std`` rule to decide whether to add noise).
    """
    mean, _, _ = ddpm_posterior(x0, x_t, abar_t, abar_prev)
    variance, _ = ddpm_variance(
        kind, _scalar(abar_t, x_t), _scalar(abar_prev, x_t), variance_values, abar_above
    )
    return mean, _cast(variance, x_t)


@dataclass
class DDPMResult:
    """One ancestral step: ``x_prev = mean + std * noise`` with ``std = exp(log_variance / 2)``,
    0 at the final step.  ``variance``/``log_variance`` are the model's (see
    :func:`ddpm_variance`); PGDiff's mean-shift guidance scales its gradient by ``variance``.
    """

    x_prev: torch.Tensor
    x0: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


def ddpm_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    abar_t: Scalar,
    abar_prev: Scalar,
    noise: torch.Tensor | None,
    variance: str = "fixed_small",
    variance_values: torch.Tensor | None = None,
    clip_x0: bool | float | None = True,
    abar_above: Scalar | None = None,
) -> DDPMResult:
    """One DDPM ancestral step over any grid (guided-diffusion ``p_sample``, diffusers
    ``DDPMScheduler.step`` with custom timesteps)::

        x0     = predict_x0(x_t, eps, abar_t, clip=clip_x0)
        mean   = posterior mean of q(x_prev | x_t, x0)            (ddpm_posterior)
        std    = exp(log_variance / 2), or 0 where abar_prev == 1  (ddpm_variance(variance))
        x_prev = mean + std * noise

    ``noise`` may be ``None`` only when every sample is at its final step.  ``abar_above`` is
    the alpha_bar of the previous (noisier) grid point; it only matters at the final step, where
    it sets guided-diffusion's clipped variance (see :func:`ddpm_variance`).
    """
    x0 = predict_x0(x_t, eps, abar_t, clip=clip_x0)
    a_t, a_p = _scalar(abar_t, x_t), _scalar(abar_prev, x_t)
    mean, _, _ = ddpm_posterior(x0, x_t, a_t, a_p)
    var, log_var = ddpm_variance(variance, a_t, a_p, variance_values, abar_above)
    std = torch.where(_is_final(a_p), torch.zeros_like(log_var), (0.5 * log_var).exp())
    std = _cast(std, x_t)
    x_prev = _add_noise(mean, std, noise)
    return DDPMResult(
        x_prev=x_prev,
        x0=x0,
        mean=mean,
        std=std,
        variance=_cast(var, x_t),
        log_variance=_cast(log_var, x_t),
    )


def _add_noise(mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    if noise is None:
        if bool((std != 0).any()):
            raise ValueError("this step adds noise (std > 0): pass `noise` (standard normal)")
        return mean
    return mean + std * noise
