"""PGDiff's update rules checked inside the loop against their formulas, on a tiny UNet.

A probe stage records every visit of the loop (each repeat too) right after the update rule.
Each visit's ``x_prev`` is then recomputed from its own ``x_t`` with the formulas written out
here in float64 (METHODS.md), the model's output for that ``x_t``, the gradient of the
smooth-semantics loss ``||x0 - y||^2`` (``g = 2 (x0 - y)``) and noise regenerated from the
per-sample seeds:

* mean shift: ``x_prev = mu - s * Sigma * g + sigma * z`` (fixed and learned variance, and DDIM
  where ``Sigma = sigma^2``), at the paper's ``s = 0.1``;
* dynamic: ``x' = mu + sigma * z``, ``x_prev = x' - s * ||x_t - x'|| / ||g|| * g`` with norms per
  sample (global) or per sample and channel;
* repeats inside the window (700, 1000]: each grid point there is visited ``repeats`` times, the
  next visit starting from the previous ``x_prev`` at the same ``t``.
"""

from __future__ import annotations

import math

import pytest
import torch

from guidestack.engine.context import Observation
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.run import run_recipe
from guidestack.engine.stage import Stage, StageOptions
from guidestack.plugins.priors.diffusers_prior import DiffusersPrior
from guidestack.plugins.priors.tiny import build_tiny_unet, tiny_scheduler
from guidestack.testing import face_batch, make_recipe, registry_with

SEEDS = [3, 4]
SIZE = 16


class Probe(Stage):
    """Records each visit right after the update rule (it is the only projection)."""

    name = "probe"
    description = "records x_t, the noise, the gradient and x_prev of every visit"
    Options = StageOptions
    visits: list[dict] = []

    @hookimpl
    def project(self, ctx, state):
        Probe.visits.append(
            {
                "t": state.t,
                "t_prev": state.t_prev,
                "index": state.index,
                "repeat": state.repeat,
                "x_t": state.x_t.clone(),
                "noise": None if state.noise is None else state.noise.clone(),
                "grad": None if state.grad is None else state.grad.clone(),
                "x_prev": state.x_prev.clone(),
            }
        )


@pytest.fixture(scope="module")
def reg():
    return registry_with(Probe)


pytestmark = pytest.mark.usefixtures("one_thread")


def unet_prior(learned: bool) -> DiffusersPrior:
    variance = "learned_range" if learned else "fixed_small"
    unet = build_tiny_unet(SIZE, out_channels=6 if learned else 3)
    return DiffusersPrior(unet, dict(tiny_scheduler(variance_type=variance).config))


def run(reg, prior, sampler, guidance):
    Probe.visits = []
    raw = {
        "sampler": sampler,
        "guidance": guidance,
        "stage": [
            {"use": "smooth-semantics", "restorer": {"use": "identity"}},
            {"use": "probe"},
        ],
    }
    y = face_batch(len(SEEDS), SIZE)
    _, ctx = run_recipe(make_recipe(raw, reg), prior, Observation(image=y), SEEDS, reg)
    return Probe.visits, ctx, y.double()


def per_sample_norm(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Written out sample by sample (and channel by channel), not with the engine's helper."""
    out = torch.zeros(x.shape[0], x.shape[1] if per_channel else 1, 1, 1, dtype=x.dtype)
    for i in range(x.shape[0]):
        if per_channel:
            for c in range(x.shape[1]):
                out[i, c] = x[i, c].pow(2).sum().sqrt()
        else:
            out[i] = x[i].pow(2).sum().sqrt()
    return out


def expected_x_prev(prior, visit, grid, y, sampler, guidance, z):
    """x_prev of one visit from the formulas, in float64."""
    acp = prior.alphas_cumprod
    t, t_prev = visit["t"], visit["t_prev"]
    a_t = float(acp[t])
    a_p = float(acp[t_prev]) if t_prev >= 0 else 1.0
    with torch.no_grad():
        out = prior(visit["x_t"], torch.full((len(SEEDS),), t))
    eps = out.eps.double()
    x_t = visit["x_t"].double()
    x0 = ((x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
    g = 2 * (x0 - y)  # d ||x0 - y||^2 / d x0, weight 1
    if sampler["kind"] == "ddpm":
        beta = 1 - a_t / a_p
        mu = (
            beta * math.sqrt(a_p) / (1 - a_t) * x0
            + (1 - a_p) * math.sqrt(1 - beta) / (1 - a_t) * x_t
        )
        if t_prev >= 0:
            beta_tilde = beta * (1 - a_p) / (1 - a_t)
        else:  # guided-diffusion: the final step's log variance is clipped to the step above's
            a_up = float(acp[grid[grid.index(t) - 1]])
            beta_tilde = (1 - a_up / a_t) * (1 - a_t) / (1 - a_up)
        if out.variance_values is None:
            var = torch.tensor(beta_tilde if t_prev >= 0 else 0.0, dtype=torch.float64)
        else:
            frac = (out.variance_values.double() + 1) / 2
            var = (frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)).exp()
        sigma = var.sqrt() if t_prev >= 0 else torch.zeros(())
    else:
        eta = sampler["eta"]
        sigma = torch.tensor(eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)))
        direction = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        mu = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - float(sigma) ** 2) * direction
        var = sigma**2
    s = guidance["scale"]
    noise_part = sigma * z if z is not None else 0.0
    if guidance["rule"] == "mean_shift":
        return mu - s * var * g + noise_part, g
    x_prime = mu + noise_part
    per_channel = guidance["rule"] == "dynamic_channel"
    step = per_sample_norm(x_t - x_prime, per_channel)
    return x_prime - s * step / per_sample_norm(g, per_channel) * g, g


CASES = {
    "mean-shift-fixed": (False, {"kind": "ddpm", "steps": 10}, {"rule": "mean_shift"}),
    "mean-shift-learned": (True, {"kind": "ddpm", "steps": 10}, {"rule": "mean_shift"}),
    "mean-shift-ddim": (False, {"kind": "ddim", "steps": 12, "eta": 0.5}, {"rule": "mean_shift"}),
    "dynamic": (False, {"kind": "ddpm", "steps": 10}, {"rule": "dynamic", "scale": 0.05}),
    "dynamic-channel": (True, {"kind": "ddpm", "steps": 10}, {"rule": "dynamic_channel"}),
}


@pytest.mark.parametrize("case", CASES)
def test_update_rule_follows_its_formula_at_every_visit(reg, case):
    learned, sampler, guidance = CASES[case]
    guidance = {"scale": 0.1, "repeats": 2, **guidance}  # s = 0.1: the paper's restoration scale
    prior = unet_prior(learned)
    visits, ctx, y = run(reg, prior, sampler, guidance)
    grid = ctx.report["grid"]

    # repeats: twice at each grid point in 700 < t <= 1000, once elsewhere; the second visit
    # starts where the first ended, at the same t
    in_window = [t for t in grid if 700 < t <= 1000]
    assert len(in_window) == 3 and ctx.model_calls == len(visits) == len(grid) + len(in_window)
    assert [v["t"] for v in visits] == [t for t in grid for _ in range(2 if t in in_window else 1)]
    for a, b in zip(visits, visits[1:], strict=False):
        if b["repeat"] == 1:
            assert a["t"] == b["t"] and a["repeat"] == 0 and torch.equal(b["x_t"], a["x_prev"])

    # the noise: standard normal from one generator per sample, drawn at every non-final visit
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]

    def draw() -> torch.Tensor:
        return torch.stack([torch.randn(3, SIZE, SIZE, generator=g) for g in gens])

    assert torch.equal(visits[0]["x_t"], draw())
    worst = 0.0
    for visit in visits:
        final = visit["t_prev"] < 0
        noisy = not final and not (sampler["kind"] == "ddim" and sampler["eta"] == 0)
        z = draw() if noisy else None
        if noisy:
            assert torch.equal(visit["noise"], z)
        expect, g = expected_x_prev(prior, visit, grid, y, sampler, guidance, z)
        torch.testing.assert_close(visit["grad"].double(), g, rtol=1e-4, atol=1e-4)
        scale = max(1.0, float(expect.abs().max()))
        worst = max(worst, float((visit["x_prev"].double() - expect).abs().max()) / scale)
    assert worst < 1e-5, worst


def test_mean_shift_moves_against_the_gradient_by_s_sigma(reg):
    """The guided and unguided runs of one visit differ by exactly ``-s * Sigma * g``: run the
    same recipe at s = 0.1 and s = 0, and compare the first step (same x_T, same noise)."""
    prior = unet_prior(True)
    sampler = {"kind": "ddpm", "steps": 10}
    guided, _, _ = run(reg, prior, sampler, {"rule": "mean_shift", "scale": 0.1})
    plain, _, _ = run(reg, prior, sampler, {"rule": "mean_shift", "scale": 0.0})
    first, base = guided[0], plain[0]
    assert torch.equal(first["x_t"], base["x_t"]) and torch.equal(first["noise"], base["noise"])
    shift = (first["x_prev"] - base["x_prev"]).double()
    g = first["grad"].double()
    # the shift is along -g everywhere, with the per-pixel learned variance as the factor
    where = g.abs() > 1e-3
    ratio = (-shift / (0.1 * g))[where]
    assert where.float().mean() > 0.5 and (ratio > 0).all()
    assert float(ratio.max()) < 1.0  # Sigma <= beta < 1
