"""ODEdit / CODE stages on the exact offline face prior: DDIM inversion round trips (and the
fixed-point correction), Langevin updates against the prior's exact log-density, step-size
schedules, latent selection, model-call accounting and the four recipes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import EXAMPLES

from guidestack.engine.context import Observation
from guidestack.engine.recipe import load_recipe, validate
from guidestack.engine.run import run_recipe
from guidestack.io.images import read_image
from guidestack.plugins.priors.gaussian import load_shipped_prior
from guidestack.plugins.stages.odedit import Langevin, LangevinOptions, langevin_updates
from guidestack.testing import run_trajectory


@pytest.fixture(scope="module")
def prior():
    return load_shipped_prior()


@pytest.fixture(scope="module")
def face(prior):
    """One exact sample of the face prior, in [-1, 1]."""
    return prior.sample(1, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)


def inversion_recipe(registry, n_steps, spacing="trailing", **stage):
    stage = {"use": "ode-inversion", **stage}
    sampler = {"kind": "ddim", "steps": n_steps, "eta": 0.0, "clip_x0": False, "spacing": spacing}
    return validate({"description": "t", "sampler": sampler, "stage": [stage]}, registry, "<test>")


def round_trip_mae(registry, prior, face, steps, **stage):
    recipe = inversion_recipe(registry, steps, reconstruct=False, **stage)
    result, ctx = run_recipe(recipe, prior, Observation(image=face), [0], registry)
    return float((result.image - face).abs().mean()), ctx


# --- inversion -------------------------------------------------------------------------------


def test_round_trip_error_halves_per_doubling_and_is_small_at_200(registry, prior, face):
    """Trailing spacing: every grid starts at t = 999, so only the step size changes."""
    errors = {n: round_trip_mae(registry, prior, face, n)[0] for n in (50, 100, 200, 400)}
    assert errors[200] < 0.015, errors
    for n in (50, 100, 200):
        ratio = errors[n] / errors[2 * n]
        assert 1.5 < ratio < 2.5, (n, errors)  # first order: about 2x per doubling


def test_round_trip_runs_through_the_stage_and_is_reported(registry, prior, face):
    recipe = inversion_recipe(registry, 50, spacing="leading")
    result, ctx = run_recipe(recipe, prior, Observation(image=face), [0], registry)
    report = ctx.report["ode-inversion"]
    grid = ctx.report["grid"]
    assert grid[0] == report["depth"] == 980 and report["steps"] == 50
    assert report["inversion_calls"] == report["reconstruction_calls"] == 50
    assert ctx.model_calls == 150  # inversion + reconstruction check + the loop
    # the check decodes exactly as the loop does when nothing else acts
    assert report["reconstruction_mae"][0] == pytest.approx(report["output_mae"][0], abs=1e-5)
    assert 0.01 < report["output_mae"][0] < 0.1
    latents = ctx.cache["ode-inversion.latents"]
    assert sorted(latents) == [-1, *sorted(grid)]
    assert torch.equal(latents[-1], face)  # no noise asked for


def test_fixed_point_beats_plain_ddim_at_equal_model_calls(registry, prior, face):
    """Plain DDIM at 150 steps and one correction per step at 100 steps both cost 300 calls
    (inversion + decoding); the corrected inversion inverts the decoder's own step."""
    plain, ctx_plain = round_trip_mae(registry, prior, face, 150)
    fixed, ctx_fixed = round_trip_mae(
        registry, prior, face, 100, method="fixed-point", iterations=1
    )
    assert ctx_plain.model_calls == ctx_fixed.model_calls == 300
    assert fixed < plain / 5, (fixed, plain)


def test_depth_and_own_grid(registry, prior, face):
    recipe = inversion_recipe(
        registry, 10, spacing="leading", depth=450, steps=30, reconstruct=False
    )
    _, ctx = run_recipe(recipe, prior, Observation(image=face), [0], registry)
    assert ctx.report["grid"][0] == 450 and ctx.report["start_t"] == 450
    # the grid of a 30-step sampler from 450 down: stride 1000 // 30 = 33
    assert ctx.report["ode-inversion"]["inversion_calls"] == len(range(450, -1, -33)) == 14
    assert sorted(ctx.cache["ode-inversion.latents"])[-1] == 450


# --- langevin --------------------------------------------------------------------------------


def langevin_run(registry, prior, obs, updates, **langevin):
    stages = [
        {"use": "ode-inversion", "reconstruct": False},
        {"use": "langevin", "at": [100], "updates": updates, "schedule": "constant", **langevin},
    ]
    recipe = {
        "sampler": {"kind": "ddim", "steps": 20, "eta": 0.0, "clip_x0": False},
        "stage": stages,
    }
    return run_trajectory(recipe, prior, obs, registry=registry, seeds=[7])


def test_langevin_raises_log_density_and_moves_further_with_more_updates(registry, prior, face):
    noisy = (
        face + 0.3 * torch.randn(face.shape, generator=torch.Generator().manual_seed(1))
    ).clamp(-1, 1)
    obs = Observation(image=noisy)
    runs = {k: langevin_run(registry, prior, obs, k, step_size=2e-3) for k in (0, 10, 50)}
    index = runs[0].ts.index(100)
    before = runs[0].steps[index - 1].x_prev  # the latent arriving at t = 100
    logp0 = float(prior.log_prob(before, 100))
    moved, logp, out_mae = {}, {}, {}
    for k, run in runs.items():
        assert torch.equal(run.steps[index - 1].x_prev, before)  # same latent before Langevin
        after = run.steps[index].x_t
        moved[k] = float((after - before).pow(2).mean().sqrt())
        logp[k] = float(prior.log_prob(after, 100))
        out_mae[k] = run.ctx.report["ode-inversion"]["output_mae"][0]
    assert moved[0] == 0.0 and logp[0] == logp0
    assert logp[10] > logp0 + 100 and logp[50] > logp[10], logp
    assert 0 < moved[10] < moved[50], moved
    assert out_mae[0] < out_mae[10] < out_mae[50], out_mae
    calls = {k: run.ctx.model_calls for k, run in runs.items()}
    assert calls[10] - calls[0] == 10 and calls[50] - calls[0] == 50


def test_noise_free_update_is_the_exact_score_step(registry, prior, face):
    """x' - x = alpha * grad log p_t(x): the score is -eps / sqrt(1 - abar_t)."""
    t, alpha = 300, 1e-3
    x = prior.sample(1, generator=torch.Generator().manual_seed(5), t=t)
    _, ctx = run_recipe(
        inversion_recipe(registry, 2, reconstruct=False),
        prior,
        Observation(image=face),
        [0],
        registry,
    )
    calls = ctx.model_calls
    out = langevin_updates(ctx, x, t, 1, alpha, noise=False)
    assert ctx.model_calls == calls + 1
    xg = x.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(prior.log_prob(xg, t).sum(), xg)
    torch.testing.assert_close(out - x, alpha * score, rtol=1e-3, atol=1e-7)


def test_batch_equals_single_runs_with_noise_and_thresholds(registry, prior):
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    faces = prior.sample(2, generator=gens).clamp(-1, 1)
    recipe = load_recipe(
        "code",
        registry,
        [
            "sampler.steps=20",
            "sampler.deterministic=true",
            "stage.langevin.updates=8",
            "stage.ode-inversion.reconstruct=false",
        ],
        prior_name=prior.name,
        prior_kind=prior.kind,
    )
    together, _ = run_recipe(recipe, prior, Observation(image=faces), [11, 22], registry)
    for i, seed in enumerate((11, 22)):
        alone, _ = run_recipe(recipe, prior, Observation(image=faces[i : i + 1]), [seed], registry)
        assert torch.equal(alone.image[0], together.image[i]), i


def test_code_recipe_model_calls_and_latents(registry, prior, face):
    """20 leading steps: depth 990 is off the grid, so the sampler visits 990, 940, ..., 40;
    t = 100 snaps to 90.  Per latent: 8 updates in 4 stages + 4 noise-free updates."""
    recipe = load_recipe(
        "code",
        registry,
        ["sampler.steps=20", "stage.langevin.updates=8"],
        prior_name=prior.name,
        prior_kind=prior.kind,
    )
    _, ctx = run_recipe(recipe, prior, Observation(image=face), [0], registry)
    assert ctx.report["grid"] == list(range(990, 39, -50))
    lang = ctx.report["langevin"]
    assert lang["latents"] == [990, 90] and lang["model_calls"] == 2 * 12
    assert ctx.model_calls == 20 + 20 + 20 + 24
    # geometric: alpha = eps * 100^(1 - t/t_top), t_top = 990 (the start, above the sampler's
    # own grid top 950), larger near the data
    eps = 3e-7  # the gaussian per_prior value
    assert lang["step_size"] == pytest.approx(
        [eps * 100 ** (1 - 990 / 990), eps * 100 ** (1 - 90 / 990)]
    )


def test_seed_schedule_grows_with_sigma(registry, prior, face):
    stages = [
        {"use": "ode-inversion", "reconstruct": False},
        {"use": "langevin", "at": [0, 500], "updates": 1, "step_size": 1e-6, "temperature": 0.0},
    ]
    recipe = validate(
        {
            "description": "t",
            "sampler": {"kind": "ddim", "steps": 10, "clip_x0": False},
            "stage": stages,
        },
        registry,
        "<test>",
    )
    _, ctx = run_recipe(recipe, prior, Observation(image=face), [0], registry)
    sigma = lambda t: math.sqrt(1 - float(prior.alphas_cumprod[t]))  # noqa: E731
    lang = ctx.report["langevin"]
    assert lang["latents"] == [500, 0]
    assert lang["step_size"] == pytest.approx([1e-6 * sigma(500) / sigma(0), 1e-6])


def stage(**options):
    return Langevin(LangevinOptions(use="langevin", **options))


def test_latent_selection():
    grid = list(range(990, -1, -10))  # leading, 100 steps
    assert stage(every=25).chosen(grid) == [750, 500, 250, 0]  # the seed's latents 0, 25, 50, 75
    assert stage(at=[0, 250, 500, 750]).chosen(grid) == [750, 500, 250, 0]
    assert stage(at=[104, 996, 3]).chosen(grid) == [100, 0]  # snapped; above the start skipped
    # the start latent never follows a step
    assert stage(at=[990, 500], order="after").chosen(grid) == [500]
    assert stage().chosen(grid[:5]) == grid[:5]  # Algorithm 1: every latent
    with pytest.raises(ValueError, match="not both"):
        LangevinOptions(use="langevin", at=[1], every=2)


def test_total_updates_split_over_latents(registry, prior, face):
    stages = [
        {"use": "ode-inversion", "reconstruct": False},
        {
            "use": "langevin",
            "every": 3,
            "updates": 10,
            "per": "total",
            "annealing": 2,
            "noise_free": "end",
        },
    ]
    recipe = validate(
        {
            "description": "t",
            "sampler": {"kind": "ddim", "steps": 9, "clip_x0": False},
            "stage": stages,
        },
        registry,
        "<test>",
    )
    _, ctx = run_recipe(recipe, prior, Observation(image=face), [0], registry)
    lang = ctx.report["langevin"]
    assert lang["latents"] == [6 * 111, 3 * 111, 0]
    assert lang["updates"] == [4, 3, 3] and lang["model_calls"] == 10 + 3


# --- the recipes -----------------------------------------------------------------------------


def test_more_updates_less_fidelity_across_recipes(registry, prior):
    image = read_image(EXAMPLES / "astronaut_degraded.png").tensor[None]
    obs = Observation(image=torch.nn.functional.interpolate(image, size=64, mode="area"))
    mae = {}
    for name in ("odedit-light", "odedit", "odedit-heavy"):
        recipe = load_recipe(
            name,
            registry,
            ["stage.ode-inversion.reconstruct=false"],
            prior_name=prior.name,
            prior_kind=prior.kind,
        )
        result, ctx = run_recipe(recipe, prior, obs, [0], registry)
        assert torch.isfinite(result.image).all()
        mae[name] = ctx.report["ode-inversion"]["output_mae"][0]
    assert mae["odedit-light"] < mae["odedit"] < mae["odedit-heavy"] < 0.3, mae
