"""Unconditional sampling through the loop reproduces the prior's mean and variance
(the exact Gaussian prior is its own oracle)."""

from __future__ import annotations

import pytest
import torch

from guidestack.engine.context import Observation
from guidestack.engine.recipe import validate
from guidestack.engine.run import run_recipe
from guidestack.plugins.priors.fit import fit_gaussian_prior

N = 512


@pytest.fixture(scope="module")
def tiny_prior():
    g = torch.Generator().manual_seed(0)
    base = 0.4 + 0.3 * torch.tanh(torch.randn(3, 4, 4, generator=g))
    data = (
        base
        + 0.15 * torch.randn(64, 3, 4, 4, generator=g)
        + 0.1 * torch.randn(64, 1, 1, 1, generator=g)
    ).clamp(-1, 1)
    prior = fit_gaussian_prior(data, components=4, flips=False)
    prior.batch_invariant = False  # 512 samples x 1000 steps: the batched formula is much faster
    return prior


# Ancestral sampling with the posterior variance ignores the uncertainty of x0, so coarse grids
# under-disperse (100 respaced steps give ~72% of the variance on this prior): use the full grid.
@pytest.mark.parametrize("sampler", [{"kind": "ddpm", "steps": 1000}])
def test_samples_have_the_fitted_mean_and_variance(registry, tiny_prior, sampler):
    recipe = validate(
        {"description": "sample", "sampler": {**sampler, "clip_x0": False}}, registry, "<test>"
    )
    obs = Observation(image=torch.zeros(N, 3, 4, 4))
    result, ctx = run_recipe(recipe, tiny_prior, obs, list(range(N)), registry)
    x = result.image.flatten(1).double()
    mean = tiny_prior.mean.double()
    cov = (
        tiny_prior.components.double()
        @ torch.diag(tiny_prior.lam.double())
        @ tiny_prior.components.double().T
    )
    cov += float(tiny_prior.s2) * torch.eye(mean.numel(), dtype=torch.float64)
    mean_error = (x.mean(0) - mean).norm() / mean.norm()
    var_ratio = x.var(0).sum() / cov.diagonal().sum()
    assert mean_error < 0.05, float(mean_error)
    assert abs(var_ratio - 1) < 0.05, float(var_ratio)
    assert ctx.model_calls == sampler["steps"]


def test_batched_formula_matches_per_sample(tiny_prior):
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 10, 300, 600, 999])
    tiny_prior.batch_invariant = True
    exact = tiny_prior(x, t).eps
    tiny_prior.batch_invariant = False
    assert torch.allclose(tiny_prior(x, t).eps, exact, atol=1e-5)
