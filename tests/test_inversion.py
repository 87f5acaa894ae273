"""DDIM inversion + DDIM sampling on the exact face prior: a first-order solver of the
probability-flow ODE, so the round-trip error must shrink about 2x per doubling of steps."""

from __future__ import annotations

import pytest
import torch

from guidestack.engine import steps
from guidestack.engine.schedule import ddim_timesteps
from guidestack.plugins.priors.gaussian import load_shipped_prior


def round_trip(prior, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Invert x0 (taken as x at t = 0) up the DDIM grid, then sample back down to t = 0."""
    grid = ddim_timesteps(n_steps, prior.num_train_timesteps, spacing="linspace")[::-1]  # 0 .. 999
    abar = prior.alphas_cumprod
    ts = lambda t: torch.full((x0.shape[0],), t, dtype=torch.long)  # noqa: E731
    x = x0.double()
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        eps = prior(x, ts(t)).eps
        up = steps.transition(float(abar[t]), float(abar[t_next]), dtype=x.dtype)
        x = steps.step(x, eps, up, clip=False, rederive=False).x_prev
    for t, t_prev in zip(grid[::-1][:-1], grid[::-1][1:], strict=True):
        eps = prior(x, ts(t)).eps
        down = steps.transition(float(abar[t]), float(abar[t_prev]), dtype=x.dtype)
        x = steps.step(x, eps, down, clip=False).x_prev
    return x


@pytest.fixture(scope="module")
def face_prior():
    return load_shipped_prior(dtype=torch.float64)


@pytest.fixture(scope="module")
def faces(face_prior):
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    return face_prior.sample(3, gens).clamp(-1, 1)


@pytest.fixture(scope="module")
def errors(face_prior, faces):
    return {
        n: (round_trip(face_prior, faces, n) - faces).abs().mean().item()
        for n in (50, 100, 200, 400)
    }


def test_round_trip_error_at_200_steps(errors):
    assert errors[200] < 0.015, errors


def test_round_trip_error_halves_per_doubling(errors):
    for coarse, fine in ((50, 100), (100, 200), (200, 400)):
        ratio = errors[coarse] / errors[fine]
        assert 2 / 1.3 <= ratio <= 2 * 1.3, (coarse, fine, ratio, errors)
