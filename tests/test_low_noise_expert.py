"""The low-noise expert (plugins/priors/expert.py) and FFDNet (plugins/priors/ffdnet.py).

The wrapper's formulas are checked with a closed-form stand-in denoiser on a tiny Gaussian prior
(no extra needed); FFDNet itself, the registered priors and the grain reduction need the
``ffdnet`` extra (``make setup`` installs it) and skip without it.
"""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch
from conftest import EXAMPLES
from torch import nn

from guidestack.engine.errors import PriorUnavailable
from guidestack.engine.prior import Prior, PriorOutput, linear_alphas_cumprod
from guidestack.plugins.priors import ffdnet
from guidestack.plugins.priors.expert import LowNoiseExpert, smoothstep_weight
from guidestack.plugins.priors.gaussian import GaussianPrior

needs_ffdnet = pytest.mark.skipif(
    not ffdnet.available(), reason="the ffdnet extra is not installed (make setup installs it)"
)


class Shrink(nn.Module):
    """A closed-form denoiser for unit-variance signals: ``D(y, s) = y / (1 + s^2)``; records sigma."""

    name = "shrink"
    max_sigma = 0.6

    def __init__(self):
        super().__init__()
        self.seen: list[float] = []

    def forward(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.seen += [float(s) for s in sigma]
        return y / (1.0 + sigma.to(y.dtype).view(-1, 1, 1, 1) ** 2)


def tiny_gaussian(s2: float = 0.05, dtype=torch.float64) -> GaussianPrior:
    g = torch.Generator().manual_seed(0)
    d, k = 3 * 8 * 8, 4
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    mean = 0.3 * torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    lam = torch.linspace(2.0, 0.5, k, dtype=torch.float64)
    return GaussianPrior(mean, basis, lam, s2, name="tiny", dtype=dtype)


def wrapped(**kw) -> LowNoiseExpert:
    return LowNoiseExpert(tiny_gaussian(), Shrink(), **kw)


def coefficients(t: int) -> tuple[float, float]:
    abar = float(linear_alphas_cumprod()[t])
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def test_expert_eps_matches_its_formula_with_the_floor_counted_as_noise():
    x_t = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for schedule in ("constant", "decaying"):
        p = wrapped(handover=(50, 150), floor_schedule=schedule)
        a_hi, b_hi = coefficients(150)
        sigma_hi = b_hi / a_hi
        for t in (0, 20, 50):  # at and below t_lo the expert alone gives eps
            a, b = coefficients(t)
            sigma = b / a
            floor = 0.05 * ((sigma / sigma_hi) ** 2 if schedule == "decaying" else 1.0)
            sigma_eff = math.sqrt(sigma**2 + floor)
            assert p.effective_sigma(t) == pytest.approx(sigma_eff, rel=1e-12)
            p.expert.seen.clear()
            eps = p(x_t, torch.tensor([t, t])).eps
            assert p.expert.seen == pytest.approx([sigma_eff] * 2, rel=1e-6)
            x0 = (x_t / a) / (1.0 + torch.tensor(sigma_eff, dtype=torch.float32).double() ** 2)
            torch.testing.assert_close(eps, (x_t - a * x0) / b, rtol=1e-6, atol=1e-6)
    # the constant floor keeps sqrt(s2) at t = 0; the decaying one vanishes with sigma_t
    assert wrapped(floor_schedule="constant").effective_sigma(0) > math.sqrt(0.05)
    assert wrapped().effective_sigma(0) < 0.02
    assert wrapped().effective_sigma(150) == pytest.approx(
        wrapped(floor_schedule="constant").effective_sigma(150)
    )


def test_blend_between_the_ends_mixes_the_two_eps():
    p = wrapped(handover=(50, 150))
    x_t = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([100])
    w = p.weight(100)
    assert 0.2 < w < 0.8
    expected = w * p.expert_eps(x_t, t) + (1 - w) * p.prior(x_t, t).eps
    torch.testing.assert_close(p(x_t, t).eps, expected, rtol=0, atol=1e-12)


def test_handover_is_continuous_and_smooth():
    p = wrapped(handover=(50, 150))
    weights = [p.weight(t) for t in range(0, 200)]
    assert all(w == 1.0 for w in weights[:51]) and all(w == 0.0 for w in weights[150:])
    steps = [weights[i] - weights[i + 1] for i in range(199)]
    assert min(steps) >= 0.0  # monotone
    assert max(steps) < 0.03  # no jump: 100 timesteps share the change
    assert 1.0 - weights[51] < 1e-3 and weights[149] < 1e-3  # flat ends (smoothstep)
    assert smoothstep_weight(0.5, 0.0, 1.0) == 0.5
    # eps changes by a small fraction of the expert-prior gap per timestep (a hard switch at
    # t = 100 would jump by the whole gap), and no more at the ends than just outside them
    x_t = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    t100 = torch.tensor([100])
    gap = float((p.expert_eps(x_t, t100) - p.prior(x_t, t100).eps).abs().max())
    eps = {t: p(x_t, torch.tensor([t])).eps for t in range(40, 161)}
    jump = {t: float((eps[t + 1] - eps[t]).abs().max()) for t in range(40, 160)}
    assert max(jump.values()) < 0.03 * gap
    assert jump[50] < 1.5 * jump[45] and jump[149] < 1.5 * jump[155]


def test_above_the_handover_it_is_the_plain_prior_bit_for_bit():
    p = wrapped(handover=(50, 150))
    x_t = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    for t in (150, 400, 999):
        p.expert.seen.clear()
        assert torch.equal(p(x_t, torch.tensor([t] * 3)).eps, p.prior(x_t, t).eps)
        assert p.expert.seen == []  # the network is not even called
    ts = torch.tensor([10, 500, 100])
    mixed = p(x_t, ts).eps
    assert torch.equal(mixed[1], p.prior(x_t, ts).eps[1])  # the prior's own value, in its batch
    assert p.kind == "gaussian" and p.name == "tiny+shrink"
    assert p.floor_variance == pytest.approx(0.05)


def test_batch_equals_single_runs():
    torch.set_num_threads(2)
    try:
        for batch_invariant in (True, False):
            p = wrapped(handover=(50, 150))
            p.batch_invariant = batch_invariant
            x_t = torch.randn(4, 3, 8, 8, dtype=torch.float64)
            t = torch.tensor([0, 75, 120, 600])
            batch = p(x_t, t).eps
            for i in range(4):
                single = p(x_t[i : i + 1], t[i : i + 1]).eps[0]
                if batch_invariant:
                    assert torch.equal(batch[i], single)
                torch.testing.assert_close(batch[i], single, rtol=0, atol=1e-5)
    finally:
        torch.set_num_threads(1)


def test_gradients_flow_through_the_expert():
    p = wrapped()
    x_t = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    p(x_t, torch.tensor([80])).eps.square().sum().backward()
    assert x_t.grad is not None and float(x_t.grad.abs().sum()) > 0


def test_floor_and_range_are_checked():
    class Plain(Prior):
        def __init__(self):
            super().__init__()
            self.image_size, self.channels = 8, 3
            self.register_buffer("alphas_cumprod", linear_alphas_cumprod())

        def forward(self, x_t, t):
            return PriorOutput(eps=torch.zeros_like(x_t))

    assert LowNoiseExpert(Plain(), Shrink()).floor_variance == 0.0  # no s2: nothing to remove
    with pytest.raises(ValueError, match="t_hi must be <="):
        wrapped(handover=(50, 400))  # sigma_t(400) is far above the expert's 0.6
    with pytest.raises(ValueError, match="handover"):
        wrapped(handover=(150, 50))
    with pytest.raises(ValueError, match="floor_schedule"):
        wrapped(floor_schedule="linear")


def test_a_clear_error_and_the_plain_default_without_the_extra(monkeypatch, registry):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert not ffdnet.available()
    with pytest.raises(PriorUnavailable, match=r"pip install 'guidestack\[ffdnet\]'"):
        ffdnet.load_network(3)
    from guidestack.engine.prior_source import load_prior

    with pytest.raises(PriorUnavailable, match="ffdnet"):
        load_prior("gaussian-faces-64+ffdnet", registry)
    default = load_prior("offline", registry)
    plain = load_prior("gaussian-faces-64", registry)
    assert type(default) is GaussianPrior and default.name == "gaussian-faces-64"
    x_t = torch.randn(2, 3, 64, 64)
    assert torch.equal(default(x_t, 10).eps, plain(x_t, 10).eps)


def test_recipes_default_to_the_offline_prior_of_kind_gaussian(registry):
    from guidestack.engine.prior_source import load_prior
    from guidestack.engine.recipe import load_recipe

    assert load_recipe("restore", registry).prior.name == "offline"
    prior = load_prior("offline", registry)
    assert prior.kind == "gaussian"
    expected = "gaussian-faces-64+ffdnet" if ffdnet.available() else "gaussian-faces-64"
    assert prior.name == expected
    recipe = load_recipe("restore", registry, prior_name=prior.name, prior_kind=prior.kind)
    assert recipe.guidance.rule == "dynamic"  # [per_prior.gaussian] still applies


# ------------------------------------------------------------------------- with the extra


def example_faces(size: int = 64) -> torch.Tensor:
    from guidestack.io.images import read_image, to_square

    faces = [
        to_square(read_image(EXAMPLES / f).tensor, size)[0]
        for f in ("astronaut.png", "grace_hopper.png")
    ]
    return torch.stack(faces)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((x - ref) / 2).square().mean())
    return 10 * math.log10(1.0 / mse)


@needs_ffdnet
def test_ffdnet_weights_load_and_denoise_the_example_faces():
    clean = example_faces()
    g = torch.Generator().manual_seed(1)
    for channels in (3, 1):
        x = clean if channels == 3 else clean.mean(1, keepdim=True)
        denoiser = ffdnet.FFDNetDenoiser.load(channels)
        for sigma in (0.1, 0.3):  # 12.75/255 and 38/255 in FFDNet's [0, 1] scale
            noisy = x + sigma * torch.randn(x.shape, generator=g)
            with torch.no_grad():
                out = denoiser(noisy, torch.full((2,), sigma))
            gain = psnr(out, x) - psnr(noisy, x)
            assert gain > 3.0, (channels, sigma, gain)  # wrong layout or levels give losses
    with pytest.raises(PriorUnavailable, match="does not hold"):
        ffdnet.load_network(1, ffdnet.weights_path(3))


def high_frequency_energy(x: torch.Tensor) -> float:
    """Mean squared 4-neighbour Laplacian: what grain adds and smooth faces lack."""
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1]
    lap = lap - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float(lap.square().mean())


@needs_ffdnet
def test_the_expert_removes_the_grain_of_samples_and_restorations(registry):
    from guidestack.engine.context import Observation
    from guidestack.engine.prior_source import load_prior
    from guidestack.engine.recipe import load_recipe
    from guidestack.engine.run import run_recipe

    clean = example_faces()
    blurred = clean.clone()
    from torchvision.transforms.functional import gaussian_blur

    blurred = gaussian_blur(clean, kernel_size=9, sigma=2.0)
    results = {}
    for name in ("gaussian-faces-64", "gaussian-faces-64+ffdnet"):
        prior = load_prior(name, registry)
        for recipe_name, obs in (("sample", None), ("difface", blurred)):
            recipe = load_recipe(
                recipe_name,
                registry,
                ["sampler.steps=20"],
                prior_name=prior.name,
                prior_kind=prior.kind,
            )
            observation = Observation(image=obs if obs is not None else torch.zeros_like(clean))
            result, _ = run_recipe(recipe, prior, observation, [0, 1], registry)
            results[name, recipe_name] = result.image.detach().clamp(-1, 1)
    for recipe_name in ("sample", "difface"):
        plain = high_frequency_energy(results["gaussian-faces-64", recipe_name])
        expert = high_frequency_energy(results["gaussian-faces-64+ffdnet", recipe_name])
        assert expert < 0.3 * plain, (recipe_name, expert, plain)
    restored = psnr(results["gaussian-faces-64+ffdnet", "difface"], clean)
    assert restored > psnr(results["gaussian-faces-64", "difface"], clean) + 1.0
