"""SHRED: restoration quality on the offline Gaussian prior, gradient modes (direction, exactness,
memory), blind kernel estimation, batch invariance, early stopping, progress and reports."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import toys
from conftest import EXAMPLES, REPO

from guidestack.engine.config import GuidanceConfig, SamplerConfig
from guidestack.engine.context import Observation, RunContext
from guidestack.engine.errors import RecipeError
from guidestack.engine.recipe import load_recipe, validate
from guidestack.engine.refs import DegradationRef
from guidestack.engine.run import make_generators, run_recipe
from guidestack.engine.sampler import Loop
from guidestack.engine.stageset import StageSet
from guidestack.io.images import read_image, to_square
from guidestack.plugins.priors.diffusers_prior import DiffusersPrior
from guidestack.plugins.priors.gaussian import load_shipped_prior
from guidestack.plugins.priors.tiny import build_tiny_unet, tiny_scheduler
from guidestack.plugins.stages.shred import Shred, ShredOptions, _to_sphere


@pytest.fixture(scope="module")
def faces_prior():
    return load_shipped_prior()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR for images in [-1, 1] (peak-to-peak 2)."""
    return 10 * torch.log10(4.0 / (a - b).pow(2).flatten(1).mean(1))


def shred(registry, prior, y, seeds, mask=None, callback=None, deterministic=False, **options):
    raw = {
        "description": "t",
        "sampler": {"deterministic": deterministic},
        "stage": [{"use": "shred", **options}],
    }
    recipe = validate(raw, registry, "<test>")
    return run_recipe(
        recipe, prior, Observation(image=y, mask=mask), seeds, registry, callback=callback
    )


def prior_samples(prior, seeds):
    return prior.sample(len(seeds), [torch.Generator().manual_seed(s) for s in seeds]).clamp(-1, 1)


def test_sr4_in_distribution_beats_bicubic(registry, faces_prior):
    """shred-sr4 as shipped for the Gaussian prior, on 4x-downsampled samples of the prior."""
    recipe = load_recipe(
        "shred-sr4", registry, prior_name=faces_prior.name, prior_kind=faces_prior.kind
    )
    truth = prior_samples(faces_prior, [0, 1, 2])
    op = DegradationRef(use="downsample", factor=4).build(registry)
    y = op.simulate(truth)  # the 16x16 images as the CLI hands them over: bicubic to 64x64
    result, ctx = run_recipe(recipe, faces_prior, Observation(image=y), [10, 11, 12], registry)
    info = ctx.report["shred"]
    ratios = [a / b for a, b in zip(info["loss_first"], info["loss_last"], strict=True)]
    assert min(ratios) >= 10, ratios
    ours, bicubic = psnr(result.image, truth), psnr(y, truth)
    assert float(ours.mean()) > float(bicubic.mean()), (ours, bicubic)
    # the restored image is consistent with the observation far beyond the bicubic guess
    assert float((op(result.image) - op.measure(y)).abs().mean()) < 0.05


def stage_and_context(registry, prior, y, seed=5, **options):
    stage = Shred(ShredOptions.model_validate({"use": "shred", **options}))
    ctx = RunContext(
        prior=prior,
        observation=Observation(image=y),
        timesteps=[prior.num_train_timesteps - 1],
        sampler=SamplerConfig(),
        guidance=GuidanceConfig(),
        generators=make_generators([seed] * y.shape[0], "cpu"),
        registry=registry,
    )
    stage.setup(ctx)
    return stage, ctx, Loop(ctx, StageSet([stage]))


def x_t_gradient(registry, prior, y, **options) -> torch.Tensor:
    stage, ctx, loop = stage_and_context(registry, prior, y, **options)
    x_t = torch.nn.Parameter(ctx.randn())
    total, _ = stage.losses(ctx, loop, stage.render(ctx, x_t, stage.grid(ctx)))
    total.sum().backward()
    return x_t.grad.flatten()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_straight_through_and_full_gradients_share_direction_on_a_linear_prior(
    registry, faces_prior
):
    """With an isotropic Gaussian prior the denoiser is linear with a scalar Jacobian, so the
    denoiser-free gradient is the full one up to scale.  On the PCA face prior (anisotropic) the
    directions differ (measured 0.89), but the straight-through one still descends."""
    linear = toys.DiagonalGaussianPrior(size=16)
    linear.var.fill_(0.1)
    y = (linear.mean + linear.var.sqrt() * torch.randn(3, 16, 16))[None].clamp(-1, 1)
    for operator in ({"use": "identity"}, {"use": "downsample", "factor": 4}):
        st = x_t_gradient(registry, linear, y, operator=operator)
        full = x_t_gradient(registry, linear, y, operator=operator, gradient="full")
        assert cosine(st, full) > 0.99, operator
    y = prior_samples(faces_prior, [0])
    operator = {"use": "downsample", "factor": 4}
    st = x_t_gradient(registry, faces_prior, y, operator=operator)
    full = x_t_gradient(registry, faces_prior, y, operator=operator, gradient="full")
    assert cosine(st, full) > 0.5


def test_full_gradient_matches_finite_differences(registry):
    """Full backprop (checkpointed) is the exact derivative of the jump-DDIM map (no clipping, so
    the map is linear on the toy prior and a central difference is exact up to rounding)."""
    prior = toys.DiagonalGaussianPrior(size=8)
    y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    options = {"operator": {"use": "downsample", "factor": 2}, "norm": "sse", "clip_x0": False}
    stage, ctx, loop = stage_and_context(registry, prior, y, gradient="full", **options)
    grid = stage.grid(ctx)
    x_t = torch.nn.Parameter(ctx.randn())
    loss = stage.losses(ctx, loop, stage.render(ctx, x_t, grid))[0].sum()
    (grad,) = torch.autograd.grad(loss, x_t)
    direction = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3))
    step = 1e-2
    with torch.no_grad():
        plus = stage.losses(ctx, loop, stage.render(ctx, x_t + step * direction, grid))[0]
        minus = stage.losses(ctx, loop, stage.render(ctx, x_t - step * direction, grid))[0]
    numeric = float((plus - minus).sum()) / (2 * step)
    assert numeric == pytest.approx(float((grad * direction).sum()), rel=2e-3)


def peak_cpu_bytes(fn) -> int:
    """The benchmark's own measurement (benchmarks/shred_cost.py), so test and table agree."""
    path = REPO / "benchmarks" / "shred_cost.py"
    spec = importlib.util.spec_from_file_location("shred_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.peak_cpu_bytes(fn)


def test_straight_through_uses_less_memory_than_full_backprop(registry):
    prior = DiffusersPrior(build_tiny_unet(16), dict(tiny_scheduler().config))
    y = torch.zeros(1, 3, 16, 16)
    peaks = {}
    for name, options in {
        "straight-through": {},
        "full-checkpointed": {"gradient": "full"},
        "full": {"gradient": "full", "checkpoint": False},
    }.items():
        stage, ctx, loop = stage_and_context(
            registry, prior, y, operator={"use": "downsample"}, delta=200, **options
        )
        x_t = torch.nn.Parameter(ctx.randn())
        grid = stage.grid(ctx)

        def iteration(stage=stage, ctx=ctx, loop=loop, x_t=x_t, grid=grid):
            total, _ = stage.losses(ctx, loop, stage.render(ctx, x_t, grid))
            total.sum().backward()

        iteration()  # warm-up: lazy initialisations stay out of the measurement
        peaks[name] = peak_cpu_bytes(iteration)
    # measured (16x16 tiny UNet, 5 jumps): 0.45 MB, 1.8 MB and 8.7 MB
    assert peaks["straight-through"] < peaks["full-checkpointed"] < peaks["full"], peaks
    assert peaks["straight-through"] * 2 < peaks["full-checkpointed"], peaks


def test_blind_deblurring_recovers_the_kernel_width(registry, faces_prior):
    truth = prior_samples(faces_prior, [0])
    blurred = DegradationRef(use="gaussian-blur-kernel", sigma=2.0).build(registry).simulate(truth)
    operator = {"use": "blind-blur", "size": 13, "kernel": "softmax", "init_sigma": 1.0}
    _, ctx = shred(registry, faces_prior, blurred, [7], operator=operator, iterations=120, lr=0.01)
    info = ctx.report["shred"]
    (width,) = info["operator"]["kernel_sigma"]
    assert abs(width - 2.0) / 2.0 < 0.25, width  # measured 1.76
    assert info["loss_first"][0] / info["loss_last"][0] > 100


def test_batch_equals_single_runs_with_blind_operator_and_early_stop(registry, faces_prior):
    y = prior_samples(faces_prior, [3, 4, 5])
    cases = [
        {"operator": {"use": "downsample", "factor": 4}, "stop_below": 0.02, "lr": 0.01},
        {"operator": {"use": "blind-blur", "size": 5}, "gradient": "full"},
    ]
    for options in cases:
        options = {**options, "iterations": 8, "deterministic": True}
        together, ctx = shred(registry, faces_prior, y, [1, 2, 3], **options)
        for i, seed in enumerate([1, 2, 3]):
            alone, _ = shred(registry, faces_prior, y[i : i + 1], [seed], **options)
            assert torch.equal(alone.image[0], together.image[i]), (options, i)
    stopped = ctx.report["shred"]
    assert stopped["stopped_early_at"] == [None] * 3


def test_early_stop_freezes_a_sample_and_saves_model_calls(registry, faces_prior):
    y = prior_samples(faces_prior, [0])
    options = {"operator": {"use": "downsample", "factor": 4}, "lr": 0.01, "iterations": 40}
    _, full = shred(registry, faces_prior, y, [1], **options)
    curve = full.report["shred"]["loss_curve"][0]
    threshold = float(full.report["shred"]["loss_last"][0]) * 3
    _, early = shred(registry, faces_prior, y, [1], stop_below=threshold, **options)
    info = early.report["shred"]
    stop = info["stopped_early_at"][0]
    assert stop is not None and stop < 40
    assert info["iterations"] == [stop] and info["loss_last"][0] < threshold
    assert early.model_calls == stop * len(early.report["grid"])
    assert curve[0] == info["loss_first"][0]


def test_progress_events_and_report(registry, faces_prior):
    events = []
    y = prior_samples(faces_prior, [0])
    _, ctx = shred(
        registry,
        faces_prior,
        y,
        [1],
        callback=lambda event, **info: events.append((event, info)),
        operator={"use": "downsample", "factor": 4},
        iterations=5,
        delta=200,
    )
    assert events[0] == ("start", {"total": 5})
    iterations = [info for event, info in events if event == "iteration"]
    assert [info["postfix"]["it"] for info in iterations] == [1, 2, 3, 4, 5]
    assert all(float(info["postfix"]["loss"]) > 0 for info in iterations)
    assert ctx.report["grid"] == [999, 799, 599, 399, 199]
    assert ctx.model_calls == 5 * 5
    info = ctx.report["shred"]
    assert info["iterations"] == [5] and len(info["loss_curve"][0]) == 5
    assert info["operator"]["use"] == "downsample"


def test_grids_and_sphere(registry, faces_prior):
    stage, ctx, _ = stage_and_context(
        registry, faces_prior, torch.zeros(1, 3, 64, 64), grid="leading"
    )
    assert stage.grid(ctx) == list(range(900, -1, -100))
    x = torch.randn(2, 3, 4, 4) * 5
    _to_sphere(x, 7.0, torch.tensor([True, False]))
    assert float(x[0].norm()) == pytest.approx(7.0, rel=1e-5) and float(x[1].norm()) > 10


def test_colorize_uses_other_stages_losses(registry, faces_prior):
    """shred-colorize: no operator, PGDiff's lightness + colour statistics are the objective."""
    gray, _ = to_square(read_image(EXAMPLES / "astronaut_gray.png").tensor[None], 64)
    recipe = load_recipe(
        "shred-colorize", registry, prior_name=faces_prior.name, prior_kind=faces_prior.kind
    )
    result, ctx = run_recipe(recipe, faces_prior, Observation(image=gray), [0], registry)
    info = ctx.report["shred"]
    assert "operator" not in info
    assert info["loss_first"][0] / info["loss_last"][0] > 10
    lightness = (result.image.mean(1) - gray.mean(1)).pow(2).mean()
    assert float(lightness) < 0.02


def test_shred_without_objective_is_an_error(registry, faces_prior):
    with pytest.raises(RecipeError, match="needs an operator"):
        shred(registry, faces_prior, torch.zeros(1, 3, 64, 64), [0], iterations=2)


def test_inpaint_recipe_needs_a_mask_and_fits_known_pixels(registry, faces_prior):
    recipe = load_recipe(
        "shred-inpaint",
        registry,
        ["stage.shred.iterations=60"],
        prior_name=faces_prior.name,
        prior_kind=faces_prior.kind,
    )
    assert registry.stage("shred").requires_for(recipe.stages[0]) == ("mask",)
    truth = prior_samples(faces_prior, [6])
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 24:40, 16:48] = 1.0
    y = truth * (1 - mask) + mask
    result, ctx = run_recipe(recipe, faces_prior, Observation(image=y, mask=mask), [0], registry)
    known = (1 - mask).expand_as(truth)
    error = float(((result.image - truth) * known).pow(2).sum() / known.sum())
    assert error < 0.01, error
    hole = float(((result.image - truth) * mask).pow(2).sum() / (3 * mask.sum()))
    assert hole < float(((y - truth) * mask).pow(2).sum() / (3 * mask.sum())), hole
