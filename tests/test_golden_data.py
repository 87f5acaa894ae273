"""The golden records of tests/data/golden are usable: provenance, denoisers, noise streams.

These tests pin what a comparison with the official code rests on, independently of guidestack's
samplers: each record names its source; the tiny denoisers built by tests/golden.py give the
official code's first model evaluation again (computed here by hand from the formulas); and the
noise each official run drew is the stream a per-sample ``torch.Generator`` gives for the same
seed (or, for CODE, which parts of it).  The comparisons of whole runs are in tests/test_golden.py:
the presets that reproduce each official pipeline (README.md there, "The presets that reproduce
each setup").
"""

from __future__ import annotations

import math
import re

import golden
import pytest
import torch

from guidestack.plugins.stages.projections import dynamic_threshold

README = (golden.GOLDEN / "README.md").read_text()
SHAPE = (3, 16, 16)


def generator_draws(seed: int, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(count)]


def x0_and_eps(prior, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw x0 prediction and eps of ``prior`` at ORIGINAL ``t`` for one image ``x``."""
    with torch.no_grad():
        eps = prior(x[None], torch.tensor([t])).eps[0]
    a = float(prior.alphas_cumprod[t])
    return (x - math.sqrt(1 - a) * eps) / math.sqrt(a), eps


def abar(prior, t: int) -> float:
    return 1.0 if t < 0 else float(prior.alphas_cumprod[t])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("name", golden.SETUPS)
def test_each_record_names_its_source_and_is_documented(name):
    record = golden.load(name)
    assert record["setup"] == name
    assert re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    assert record["repository"].startswith("https://github.com/")
    assert f"`{name}.pt`" in README  # described in the README
    assert record["commit"] in README  # with the commit it was made from
    assert (golden.GOLDEN / f"{name}.pt").stat().st_size < 200_000


@pytest.mark.parametrize("name", [s for s in golden.SETUPS if s.startswith("pgdiff")])
def test_adm_denoiser_gives_pgdiff_first_x0(name):
    record = golden.load(name)
    x0, _ = x0_and_eps(golden.adm_prior(), record["x_T"], record["visited_t"][0])
    assert max_diff(x0.clamp(-1, 1), record["x0"][0]) < 1e-4


@pytest.mark.parametrize("name", ["difface-restore", "difface-inpaint"])
def test_gaussian_denoiser_gives_difface_first_x0(name):
    record = golden.load(name)
    prior = golden.prior_for(record)
    x0, _ = x0_and_eps(prior, record["x_start"], record["visited_t"][0])
    x0 = x0.clamp(-1, 1)
    if "missing" in record:  # one refinement x0 -= 0.5 * grad sum((1-M)(x0-y)^2): known -> y
        known = 1 - record["missing"]
        x0 = (known * record["observation"] + (1 - known) * x0).clamp(-1, 1)
    assert max_diff(x0, record["x0"][0]) < 1e-4


@pytest.mark.parametrize("name", ["bird-inpaint", "bird-sr"])
def test_unet_denoiser_gives_bird_first_render(name):
    """x0 = f(x_T) for the raw initial noise: DDIM (eta 0) over 900, 800, ..., 0, x0 clipped and
    eps re-derived at each jump."""
    record = golden.load(name)
    prior = golden.unet_prior()
    grid = record["timesteps"]
    x = record["x_T"][0]
    for t, t_prev in zip(grid, [*grid[1:], -1], strict=True):
        x0, _ = x0_and_eps(prior, x, t)
        x0 = x0.clamp(-1, 1)
        a, a_prev = abar(prior, t), abar(prior, t_prev)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    assert max_diff(x, record["x0"][0]) < 1e-4


def test_gaussian_denoiser_gives_code_first_inversion_step():
    """The notebook takes the noised image as the t = 0 latent and inverts it to t = 5 with
    dynamic thresholding of x0 and the eps re-derived from it."""
    record = golden.load("code")
    prior = golden.prior_for(record)
    x = record["latent_t0"]
    x0, _ = x0_and_eps(prior, x, 0)
    x0 = dynamic_threshold(x0[None], 0.98, 1.3)[0]
    a0, a5 = abar(prior, 0), abar(prior, 5)
    eps = (x - math.sqrt(a0) * x0) / math.sqrt(1 - a0)
    x5 = math.sqrt(a5) * x0 + math.sqrt(1 - a5) * eps
    assert max_diff(x5, record["inverted"][5]) < 1e-4
    # with guidestack's float64 schedule instead of diffusers' float32 one the step moves by 1e-5
    other = golden.gaussian_prior()
    assert float(other.alphas_cumprod[0]) != float(prior.alphas_cumprod[0])


@pytest.mark.parametrize(
    "name", ["pgdiff-restore", "pgdiff-colorize", "pgdiff-inpaint", "pgdiff-restore-repeats"]
)
def test_pgdiff_initial_noise_is_the_first_draw_of_the_seed(name):
    record = golden.load(name)
    (first,) = generator_draws(record["seed"], 1)
    assert torch.equal(first, record["x_T"])
    # one draw for x_T, one per visited step (the last is drawn and unused), one per repeat
    repeats = 4 if name.endswith("repeats") else 0
    assert record["noise_draws"] == 1 + len(record["visited_t"]) + repeats


@pytest.mark.parametrize("name", ["bird-inpaint", "bird-sr"])
def test_bird_initial_noise_is_the_first_draw_of_the_seed_and_not_on_the_sphere(name):
    record = golden.load(name)
    (first,) = generator_draws(record["seed"], 1)
    assert torch.equal(first, record["x_T"][0])
    radius = math.sqrt(first.numel())
    assert abs(float(first.norm()) - radius) > 0.5  # raw noise, projected only after Adam steps
    assert abs(float(record["x_T"][1].norm()) - radius) < 1e-3


@pytest.mark.parametrize("name", ["difface-restore", "difface-inpaint"])
def test_difface_noises_to_start_then_first_calls_one_grid_step_lower(name):
    record = golden.load(name)
    prior = golden.prior_for(record)
    start = record["visited_t"][0] + 4  # ddim250: stride 4
    assert start in (400, 480)
    (z,) = generator_draws(record["seed"], 1)
    a = abar(prior, start)
    x_start = math.sqrt(a) * record["estimate"] + math.sqrt(1 - a) * z
    assert max_diff(x_start, record["x_start"]) < 1e-5
    assert record["noise_draws"] == 1 + len(record["visited_t"])


def test_code_noise_is_two_seeded_streams_with_discarded_draws():
    record = golden.load("code")
    params = record["parameters"]
    z1, z2 = generator_draws(params["inversion_seed"], 2)
    assert torch.equal(torch.stack([z1, z2]), record["inversion_noise"])
    assert torch.equal(record["observation"] + 0.01 * z1 + 0.01 * z2, record["latent_t0"])
    # editing: 2 noisy updates x 4 stages at t = 990, then one discarded draw per DDIM decoding
    # step from latent 198 down to 21 (178), then the 8 draws at t = 100
    stream = generator_draws(params["editing_seed"], 8 + 178 + 8)
    used = torch.stack(stream[:8] + stream[-8:])
    assert torch.equal(used, record["langevin_noise"])
    assert not torch.equal(torch.stack(stream[:16]), record["langevin_noise"])
