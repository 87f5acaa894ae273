"""DifFace: the diffused-estimator start, its exact start time, eta, hole filling, paste-back."""

from __future__ import annotations

import math

import pytest
import torch
import toys
from conftest import EXAMPLES

from guidestack.engine import steps
from guidestack.engine.context import Observation
from guidestack.engine.errors import InputError, RecipeError
from guidestack.engine.recipe import load_recipe, validate
from guidestack.engine.run import run_recipe
from guidestack.engine.schedule import ddim_timesteps, step_pairs
from guidestack.plugins.stages.difface import fill_missing


class RecordingPrior(toys.DiagonalGaussianPrior):
    """The exact toy prior, remembering the timestep and input of every call."""

    def __init__(self, size: int = 8):
        super().__init__(size=size)
        self.calls: list[tuple[int, torch.Tensor]] = []

    def forward(self, x_t, t):
        self.calls.append((int(t[0]), x_t.detach().clone()))
        return super().forward(x_t, t)


@pytest.fixture(scope="module")
def prior():
    return RecordingPrior()


@pytest.fixture(scope="module")
def faces():
    from guidestack.plugins.priors.gaussian import load_shipped_prior

    return load_shipped_prior()


def clean(n: int = 1, size: int = 8, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.6 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)


def difface(registry, eta=0.0, start=400, steps=250, **stage):
    raw = {
        "description": "test",
        "sampler": {"kind": "ddim", "steps": steps, "eta": eta},
        "stage": [{"use": "difface", "start": start, "restorer": {"use": "identity"}, **stage}],
    }
    return validate(raw, registry, "<test>")


def test_first_model_call_is_at_the_start_time_and_the_latent_is_noised_to_it(registry, prior):
    prior.calls.clear()
    y = clean()
    _, ctx = run_recipe(difface(registry, eta=0.5), prior, Observation(y), [7], registry)
    ts = [t for t, _ in prior.calls]
    assert ts[0] == 400  # the official code would call the model at 396 first
    assert ts == ctx.report["grid"] == list(range(400, -1, -4))
    assert ctx.model_calls == len(ts) == 101 and ctx.report["start_t"] == 400
    # x_400 = sqrt(abar_400) f(y) + sqrt(1 - abar_400) eps with eps the sample's first draw
    abar = float(prior.alphas_cumprod[400])
    eps = torch.randn(y.shape[1:], generator=torch.Generator().manual_seed(7))
    expected = math.sqrt(abar) * y + math.sqrt(1 - abar) * eps
    assert torch.allclose(prior.calls[0][1], expected, atol=1e-6)


def test_perfect_restorer_with_eta_zero_is_ddim_from_the_noised_clean_image(registry, prior):
    """Restorer = the clean image (identity on a clean observation): plain DDIM from x_N.

    The reference is the pure step function (checked against diffusers' DDIMScheduler in
    tests/test_steps.py) on the 250-step grid's tail from 400, in float64."""
    x = clean(2)
    seeds = [5, 6]
    result, _ = run_recipe(difface(registry, eta=0.0), prior, Observation(x), seeds, registry)

    def abar(t: int) -> float:
        return 1.0 if t < 0 else float(prior.alphas_cumprod[t])

    eps = torch.stack(
        [torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    z = (math.sqrt(abar(400)) * x + math.sqrt(1 - abar(400)) * eps).double()
    for t, t_prev in step_pairs(ddim_timesteps(250)[ddim_timesteps(250).index(400) :]):
        model_eps = prior(z, torch.full((2,), t)).eps
        tr = steps.transition(abar(t), abar(t_prev), dtype=z.dtype)
        z = steps.step(z, model_eps, tr).x_prev
    assert (result.image.double() - z.clamp(-1, 1)).abs().max() < 1e-4


def test_output_diversity_over_seeds_grows_with_eta(registry):
    """Exact toy prior, start 100 on the 250-step grid: the spread over 16 seeds grows with eta.

    (On gaussian-faces-64 the spread is dominated by its isotropic grain and grows only slightly
    at this start; see docs/difface.md.)"""
    prior = toys.DiagonalGaussianPrior(size=8)
    y = clean().expand(16, -1, -1, -1)
    seeds = list(range(16))
    spread = []
    for eta in (0.0, 0.5, 1.0):
        result, _ = run_recipe(
            difface(registry, eta=eta, start=100), prior, Observation(y), seeds, registry
        )
        spread.append(result.image.std(dim=0).mean().item())
    assert spread[0] * 1.03 < spread[1] and spread[1] * 1.05 < spread[2], spread
    assert spread[0] > 0.05  # even eta 0 differs over seeds: the start noise


def test_builtin_recipe_calls_the_model_once_per_visited_step(registry, faces, tmp_path):
    import json

    from guidestack.cli.main import main

    code = main(
        [
            "run",
            "difface",
            str(EXAMPLES / "astronaut_degraded.png"),
            "-o",
            str(tmp_path),
            "--prior",
            "gaussian-faces-64",
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "run.json").read_text())
    recipe = load_recipe("difface", registry, prior_name="gaussian-faces-64", prior_kind="gaussian")
    start = recipe.stages[0].start
    grid = ddim_timesteps(recipe.sampler.steps, start=start)
    item = report["inputs"][0]
    assert item["start_t"] == start == 100
    assert item["model_calls"] == len(grid) == 26
    # the paper's settings without a per-prior table: 250-step grid, start 400, eta 0.5
    plain = load_recipe("difface", registry)
    assert (plain.stages[0].start, plain.sampler.eta, plain.sampler.steps) == (400, 0.5, 250)


def test_start_beyond_the_schedule_is_refused(registry, prior):
    with pytest.raises(Exception, match="start 1200"):
        run_recipe(difface(registry, start=1200), prior, Observation(clean()), [0], registry)


def test_fill_missing_keeps_known_pixels_and_fills_holes_smoothly():
    y = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32).clone()
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:24, 10:20] = 1
    y_holed = y * (1 - mask) + mask  # white hole, as in examples/faces/*_masked.png
    out = fill_missing(y_holed, mask)
    assert torch.equal(out[:, :, mask[0, 0] == 0], y_holed[:, :, mask[0, 0] == 0])
    assert torch.equal(out[1], y[1])
    hole = out[0][:, mask[0, 0] == 1]
    assert (
        hole.min() >= y[0, 0, 0, 9] - 1e-6 and hole.max() <= y[0, 0, 0, 20] + 1e-6
    )  # between its borders
    # a constant image with a hole is filled with that constant
    flat = torch.full((1, 3, 16, 16), 0.3)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 3:12, 2:9] = 1
    assert torch.allclose(fill_missing(flat * (1 - m) - m, m), flat, atol=1e-6)
    # batch invariance: a sample's fill does not depend on the other samples
    assert torch.equal(fill_missing(y_holed[:1], mask[:1]), out[:1])


def test_fill_missing_needs_a_mask(registry, prior):
    with pytest.raises(InputError, match="mask"):
        run_recipe(difface(registry, fill_missing=True), prior, Observation(clean()), [0], registry)


def test_paste_known_final_and_every_step(registry, prior):
    y = clean(2)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 3:7] = 1
    obs = Observation(y, mask=mask)
    stages = [{"use": "difface", "start": 600, "restorer": {"use": "identity"}}]
    sampler = {"kind": "ddim", "steps": 50, "eta": 1.0}

    def run(extra):
        r = validate(
            {"description": "t", "sampler": sampler, "stage": stages + extra}, registry, "<t>"
        )
        return run_recipe(r, prior, obs, [1, 2], registry)[0].image

    plain = run([])
    pasted = run([{"use": "paste-known"}])
    known = (1 - mask).bool().expand_as(y)
    assert torch.equal(pasted[known], y[known])
    assert torch.equal(pasted[~known], plain[~known])  # the final paste changes nothing else
    assert not torch.allclose(plain[known], y[known], atol=1e-2)

    stepped = run([{"use": "paste-known", "every_step": True, "final": False}])
    assert torch.allclose(stepped[known], y[known], atol=1e-6)  # x_prev at t_prev = -1 is y
    assert (stepped[~known] - plain[~known]).abs().max() > 1e-2  # the hole saw the known pixels

    soft = run([{"use": "paste-known", "feather": 1.0}])
    assert torch.equal(soft[~known], plain[~known])
    next_to_hole = (pasted - soft).abs()[..., 1, 3:7]
    assert next_to_hole.min() > 0  # blended in, not pasted hard
    assert ((soft - y).abs() <= (plain - y).abs() + 1e-6)[
        known
    ].all()  # a blend, never an overshoot


def test_paste_known_needs_a_mask(registry, prior):
    r = validate({"description": "t", "stage": [{"use": "paste-known"}]}, registry, "<t>")
    with pytest.raises(InputError, match="mask"):
        run_recipe(r, prior, Observation(clean()), [0], registry)


def test_two_difface_starts_are_rejected_naming_both(registry):
    raw = {
        "description": "t",
        "stage": [
            {"use": "difface", "id": "coarse"},
            {"use": "difface", "id": "fine", "start": 200},
        ],
    }
    with pytest.raises(RecipeError) as info:
        validate(raw, registry, "<t>")
    assert (
        "coarse" in str(info.value)
        and "fine" in str(info.value)
        and "initial_latent" in str(info.value)
    )


def test_inpaint_recipe_refines_x0_onto_the_known_pixels_and_pastes_them_back(registry, prior):
    recipe = load_recipe("difface-inpaint", registry)
    assert (recipe.stages[0].start, recipe.sampler.eta) == (480, 1.0)
    y = clean(2)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 1:5, 2:7] = 1
    mask[1, :, 4:8, 0:3] = 1
    known = (mask < 0.5).expand_as(y)
    holed = torch.where(known, y, torch.ones_like(y))
    seen: list[tuple[int, float]] = []

    def callback(event, **info):
        if event == "step":
            state = info["state"]
            seen.append((state.t, (state.x0 - y)[known].abs().max().item()))

    prior.calls.clear()
    result, ctx = run_recipe(
        recipe, prior, Observation(holed, mask=mask), [3, 4], registry, callback=callback
    )
    assert prior.calls[0][0] == 480 and ctx.model_calls == len(seen) == 121
    # x0 -= 0.5 * d/dx0 sum((1-M)(x0-y)^2) puts every refined x0 exactly on y where known
    assert max(err for _, err in seen) < 1e-6
    assert torch.equal(result.image[known], y[known])
    assert (result.image[~known] - 1).abs().mean() > 0.3  # the white fill was replaced
