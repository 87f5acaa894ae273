"""PGDiff: property losses, update rules, repeats, recipes, and the task evidence on real faces.

Evidence runs use the offline Gaussian prior (its exact posterior is the oracle) and faces from
../shared/data at 64x64; each recipe runs with its per-prior defaults for that prior.
"""

from __future__ import annotations

import kornia
import pytest
import torch
from conftest import shared

from guidestack.engine.context import Observation, RunContext
from guidestack.engine.errors import InputError, RecipeError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.prior import Prior, PriorOutput, linear_alphas_cumprod
from guidestack.engine.recipe import load_recipe, validate
from guidestack.engine.registry import load_registry
from guidestack.engine.run import run_recipe
from guidestack.engine.stage import Stage, StageOptions
from guidestack.io.images import read_image, to_square
from guidestack.plugins.priors.gaussian import load_shipped_prior
from guidestack.plugins.stages.color_statistics import CELEBA_HQ_MEAN, channel_stats

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prior():
    return load_shipped_prior("gaussian-faces-64")


@pytest.fixture(scope="module")
def reg():
    r = load_registry(blocked=set(), entry_points=False)
    r.add_stage(RecordRepeats)
    return r


def faces(folder: str, n: int, pattern: str = "*.png") -> torch.Tensor:
    files = sorted(shared("faces", folder).glob(pattern))[:n]
    assert len(files) == n
    return torch.stack([to_square(read_image(f).tensor, SIZE)[0] for f in files])


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample PSNR in dB for images in [-1, 1] (peak-to-peak 2), optionally on a region."""
    err = (a - b).pow(2)
    if where is None:
        mse = err.flatten(1).mean(1)
    else:
        where = where.expand_as(a)
        mse = (err * where).flatten(1).sum(1) / where.flatten(1).sum(1)
    return 10 * torch.log10(4.0 / mse)


def box_mask(n: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(n, 1, SIZE, SIZE)
    mask[..., rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    return mask


def run_builtin(name, reg, prior, obs, seeds, overrides=()):
    recipe = load_recipe(name, reg, list(overrides), prior_name=prior.name, prior_kind=prior.kind)
    return run_recipe(recipe, prior, obs, seeds, reg)


# --- losses ------------------------------------------------------------------------------


def make_ctx(reg, prior, obs) -> RunContext:
    from guidestack.engine.config import GuidanceConfig, SamplerConfig

    return RunContext(
        prior=prior,
        observation=obs,
        timesteps=[999],
        sampler=SamplerConfig(),
        guidance=GuidanceConfig(),
        generators=[torch.Generator().manual_seed(i) for i in range(obs.batch_size)],
        registry=reg,
    )


def stage_loss(reg, prior, obs, options: dict, x0: torch.Tensor):
    """(loss [N], d sum(loss) / d x0) of one configured stage."""
    from guidestack.engine.context import StepState

    recipe = validate(
        {"description": "t", "sampler": {"kind": "ddpm"}, "stage": [options]}, reg, "<t>"
    )
    stage = reg.stage(options["use"])(recipe.stages[0])
    ctx = make_ctx(reg, prior, obs)
    stage.setup(ctx)
    x0 = x0.clone().requires_grad_(True)
    state = StepState(t=500, t_prev=400, index=0, x_t=x0.detach(), x0=x0)
    loss = stage.guidance_loss(ctx=ctx, state=state)
    (grad,) = torch.autograd.grad(loss.sum(), x0)
    return loss.detach(), grad


def test_property_losses_follow_the_formulas(reg, prior):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:5, 3:7] = 1
    obs = Observation(image=y, mask=mask)

    loss, _ = stage_loss(
        reg, prior, obs, {"use": "smooth-semantics", "restorer": {"use": "identity"}}, x0
    )
    assert torch.allclose(loss, (x0 - y).pow(2).flatten(1).sum(1))

    loss, _ = stage_loss(reg, prior, obs, {"use": "lightness"}, x0)
    gray_err = (x0.mean(1) - y.mean(1)).pow(2).flatten(1).sum(1)
    assert torch.allclose(loss, 3 * gray_err)  # gray repeated on 3 channels, as the official code

    loss, _ = stage_loss(reg, prior, obs, {"use": "lightness", "region": "known"}, x0)
    assert torch.allclose(
        loss, 3 * ((x0.mean(1) - y.mean(1)).pow(2) * (1 - mask[:, 0])).flatten(1).sum(1)
    )

    loss, grad = stage_loss(reg, prior, obs, {"use": "unmasked-region"}, x0)
    assert torch.allclose(loss, ((1 - mask) * (x0 - y)).pow(2).flatten(1).sum(1))
    assert grad[mask.expand_as(grad) > 0].abs().max() == 0
    assert grad[mask.expand_as(grad) == 0].abs().min() > 0


def test_color_statistics_loss_target_and_gradient_options(reg, prior):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 1.6 - 0.8
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :3, :] = 1
    obs = Observation(image=x0, mask=mask, reference=torch.rand(2, 3, 8, 8, generator=g) * 2 - 1)

    loss, grad_sg = stage_loss(reg, prior, obs, {"use": "color-statistics"}, x0)
    mean, std = channel_stats(x0)
    target_mean = torch.tensor(CELEBA_HQ_MEAN).view(1, 3, 1, 1)
    target_std = torch.tensor([0.53549316, 0.47539538, 0.46814889]).view(1, 3, 1, 1)
    adain = ((x0 - mean) / std * target_std + target_mean).clamp(-1, 1)
    assert torch.allclose(loss, (x0 - adain).pow(2).flatten(1).sum(1), atol=1e-5)
    assert torch.allclose(grad_sg, 2 * (x0 - adain), atol=1e-5)  # stop-gradient (paper)

    _, grad_full = stage_loss(
        reg, prior, obs, {"use": "color-statistics", "stop_gradient": False}, x0
    )
    assert (grad_full - grad_sg).abs().max() > 1e-3  # the official code differentiates AdaIN too

    _, grad_masked = stage_loss(
        reg, prior, obs, {"use": "color-statistics", "mask_gradient": True}, x0
    )
    inside = mask.expand_as(x0) > 0
    assert grad_masked[inside].abs().max() == 0
    assert torch.allclose(grad_masked[~inside], grad_sg[~inside], atol=1e-6)

    # statistics of the reference: a sample whose own stats are the reference's has zero loss
    ref = obs.reference
    loss, _ = stage_loss(
        reg, prior, obs, {"use": "color-statistics", "statistics": "reference"}, ref
    )
    assert loss.max() < 1e-6


def test_color_statistics_from_a_folder(reg, prior, tmp_path):
    from guidestack.io.outputs import save_image
    from guidestack.plugins.stages.color_statistics import folder_statistics

    a = torch.full((3, 8, 8), 0.2)
    a[0] = 0.6
    b = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    save_image(a, tmp_path / "a.png")
    save_image(b, tmp_path / "b.png")
    mean, std = folder_statistics(tmp_path)
    read = torch.stack([read_image(tmp_path / n).tensor for n in ("a.png", "b.png")])
    m, s = channel_stats(read.double())
    assert mean == pytest.approx(m.mean(0).flatten().tolist(), abs=1e-6)
    assert std == pytest.approx(s.mean(0).flatten().tolist(), abs=1e-6)


def test_stage_inputs_and_options_are_checked(reg, prior):
    obs = Observation(image=torch.zeros(1, 3, SIZE, SIZE))
    for name, flag in (("inpaint", "--mask"),):
        with pytest.raises(InputError, match=flag):
            run_builtin(name, reg, prior, obs, [0], ["sampler.steps=2"])
    raw = {"description": "t", "sampler": {"kind": "ddpm"}}
    recipe = validate(
        {**raw, "stage": [{"use": "color-statistics", "statistics": "reference"}]}, reg, "<t>"
    )
    with pytest.raises(InputError, match="reference"):
        run_recipe(recipe, prior, obs, [0], reg)
    with pytest.raises(RecipeError, match="mean and std"):
        validate(
            {**raw, "stage": [{"use": "color-statistics", "statistics": "custom"}]}, reg, "<t>"
        )
    with pytest.raises(RecipeError, match="region"):
        validate({**raw, "stage": [{"use": "lightness", "region": "hole"}]}, reg, "<t>")


# --- engine behaviour PGDiff relies on ----------------------------------------------------------


class RecordRepeatsOptions(StageOptions):
    pass


class RecordRepeats(Stage):
    """Records (t, repeat, x_t, x_prev) of every step."""

    name = "record-repeats"
    Options = RecordRepeatsOptions
    log: list = []

    @hookimpl
    def project(self, ctx, state):
        RecordRepeats.log.append((state.t, state.repeat, state.x_t.clone(), state.x_prev.clone()))


@pytest.mark.parametrize("renoise", [False, True])
def test_repeats_feed_x_prev_back_at_the_same_t(reg, prior, renoise):
    """Official PGDiff: the next repeat starts from the previous repeat's x_{t-1}, at the same t;
    ``renoise = true`` diffuses it back to t first."""
    RecordRepeats.log = []
    raw = {
        "description": "t",
        "sampler": {"kind": "ddpm", "steps": 10},
        "guidance": {"rule": "dynamic", "scale": 0.5, "repeats": 3, "renoise": renoise},
        "stage": [
            {"use": "smooth-semantics", "restorer": {"use": "identity"}},
            {"use": "record-repeats"},
        ],
    }
    y = faces("hq", 1)
    _, ctx = run_recipe(validate(raw, reg, "<t>"), prior, Observation(image=y), [0], reg)
    log = RecordRepeats.log
    pairs = [(a, b) for a, b in zip(log, log[1:], strict=False) if b[1] == a[1] + 1]
    assert pairs and all(a[0] == b[0] > 700 for a, b in pairs)  # same t, inside 700 < t <= 1000
    for a, b in pairs:
        assert torch.equal(b[2], a[3]) != renoise
    in_window = sum(1 for t in ctx.report["grid"] if 700 < t <= 1000)
    assert ctx.model_calls == 10 + 2 * in_window == len(log)


def test_guidance_is_batch_invariant(reg, prior):
    """All property stages at once, a repeat window and the per-channel rule: a batch of 3 gives
    bit-identical images to three single runs (deterministic mode)."""
    raw = {
        "description": "t",
        "sampler": {"kind": "ddpm", "steps": 12, "deterministic": True},
        "guidance": {"rule": "dynamic_channel", "scale": 0.3, "repeats": 2},
        "stage": [
            {"use": "smooth-semantics", "restorer": {"use": "gaussian-blur", "sigma": 1.0}},
            {"use": "lightness", "region": "known", "restorer": {"use": "median"}},
            {
                "use": "color-statistics",
                "weight": 0.5,
                "mask_gradient": True,
                "stop_gradient": False,
            },
            {"use": "unmasked-region"},
        ],
    }
    recipe = validate(raw, reg, "<t>")
    x = faces("hq", 3)
    mask = box_mask(3, (20, 40), (10, 30))
    mask[1] = box_mask(1, (5, 15), (30, 60))[0]
    obs = Observation(image=x, mask=mask)
    seeds = [3, 4, 5]
    together, _ = run_recipe(recipe, prior, obs, seeds, reg)
    for i in range(3):
        alone, _ = run_recipe(recipe, prior, obs.select([i]), [seeds[i]], reg)
        assert torch.equal(alone.image[0], together.image[i]), i


@pytest.mark.parametrize("name", ["restore", "colorize", "inpaint", "old-photo"])
def test_model_calls_equal_recipe_steps_plus_repeats(reg, prior, name):
    obs = Observation(image=faces("hq", 1), mask=box_mask(1, (30, 40), (20, 40)))
    _, ctx = run_builtin(name, reg, prior, obs, [0], ["sampler.steps=20"])
    assert ctx.report["model_calls"] == 20
    _, ctx = run_builtin(name, reg, prior, obs, [0], ["sampler.steps=20", "guidance.repeats=3"])
    in_window = sum(1 for t in ctx.report["grid"] if 700 < t <= 1000)  # ORIGINAL units
    assert in_window == 6
    assert ctx.report["model_calls"] == 20 + 2 * in_window


def test_t_independent_restorer_runs_once_per_run(reg, prior):
    obs = Observation(image=faces("hq", 2))
    _, ctx = run_builtin("restore", reg, prior, obs, [0, 1], ["sampler.steps=15"])
    assert ctx.report["restorer_calls"] == {"smooth-semantics": 1}
    assert ctx.model_calls == 15


class NoNoisePrior(Prior):
    """eps = 0, so the raw x0 = x_t / sqrt(abar_t) is far outside [-1, 1] early on."""

    kind = "toy"

    def __init__(self):
        super().__init__()
        self.image_size, self.channels, self.name = 8, 3, "no-noise"
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod())

    def forward(self, x_t, t):
        return PriorOutput(eps=torch.zeros_like(x_t))


def test_clipped_x0_is_what_the_losses_see():
    """PGDiff (clip_denoised=True) computes every property on x0 clipped to [-1, 1]."""
    seen = []

    class Spy(Stage):
        name = "spy-x0"
        Options = RecordRepeatsOptions

        @hookimpl
        def guidance_loss(self, ctx, state):
            seen.append(float(state.x0.detach().abs().max()))
            return state.x0.flatten(1).sum(1) * 0

    r = load_registry(blocked=set(), entry_points=False)
    r.add_stage(Spy)
    raw = {
        "description": "t",
        "sampler": {"kind": "ddpm", "steps": 5},
        "stage": [{"use": "spy-x0"}],
    }
    run_recipe(
        validate(raw, r, "<t>"), NoNoisePrior(), Observation(image=torch.zeros(1, 3, 8, 8)), [0], r
    )
    assert len(seen) == 5 and max(seen) == 1.0


# --- task evidence ---------------------------------------------------------------------------


def test_inpainting_keeps_known_pixels_and_follows_the_exact_posterior(reg, prior):
    n, k = 4, 8
    x = faces("hq", n)
    mask = box_mask(n, (28, 60), (16, 48))  # 32 x 32: 25% of the image
    assert float(mask.mean()) == 0.25
    y = x * (1 - mask) + mask  # holes are white, as in the examples
    obs = Observation(image=y.repeat_interleave(k, 0), mask=mask.repeat_interleave(k, 0))
    result, _ = run_builtin("inpaint", reg, prior, obs, list(range(n * k)), ["sampler.steps=50"])
    out = result.image
    known = psnr(out, y.repeat_interleave(k, 0), (1 - mask).repeat_interleave(k, 0))
    assert known.min() >= 30.0, known
    avg = out.view(n, k, 3, SIZE, SIZE).mean(1)
    post = prior.posterior_mean(y, mask)
    prior_mean = prior.mean.view(1, 3, SIZE, SIZE).to(avg.dtype)
    to_post = ((avg - post).pow(2) * mask).flatten(1).sum(1)
    to_prior = ((avg - prior_mean).pow(2) * mask).flatten(1).sum(1)
    assert (to_post < to_prior).all(), (to_post, to_prior)
    assert (to_post < 0.25 * to_prior).all()


def test_inpainting_a_newcomer_beats_a_flat_fill(reg, prior):
    """Faces the prior was not fitted on (CodeFormer's inputs): the filled hole is closer to the
    truth than the mean colour of the known pixels."""
    x = faces("lq", 4, "codeformer_*.png")
    mask = box_mask(4, (28, 60), (16, 48))
    y = x * (1 - mask) + mask
    known = 1 - mask
    fill = (y * known).flatten(2).sum(2) / known.flatten(2).sum(2)
    flat = y * known + mask * fill[..., None, None]
    result, _ = run_builtin(
        "inpaint", reg, prior, Observation(image=y, mask=mask), [0, 1, 2, 3], ["sampler.steps=50"]
    )
    ours, baseline = psnr(result.image, x, mask).mean(), psnr(flat, x, mask).mean()
    assert ours > baseline + 1.0, (ours, baseline)


def test_colorization_keeps_lightness_and_reaches_target_statistics(reg, prior):
    x = faces("hq", 4)
    gray = x.mean(1, keepdim=True).expand_as(x).contiguous()
    obs = Observation(image=gray, reference=x)
    result, _ = run_builtin(
        "colorize",
        reg,
        prior,
        obs,
        [0, 1, 2, 3],
        ["sampler.steps=50", 'stage.color-statistics.statistics="reference"'],
    )
    out = result.image
    assert psnr(out.mean(1, keepdim=True), gray[:, :1]).min() >= 30.0
    mean, std = channel_stats(out)
    target_mean, target_std = channel_stats(x)
    assert (mean - target_mean).abs().max() <= 0.1
    assert (std - target_std).abs().max() <= 0.1
    # the statistics are what moves the colours: without them the channels stay further away
    plain, _ = run_builtin(
        "colorize",
        reg,
        prior,
        obs,
        [0, 1, 2, 3],
        ["sampler.steps=50", "stage.color-statistics.weight=0"],
    )
    plain_mean, _ = channel_stats(plain.image)
    assert (plain_mean - target_mean).abs().mean() > (mean - target_mean).abs().mean()


def test_restoration_beats_the_degraded_input(reg, prior):
    x = faces("hq", 4)
    g = torch.Generator().manual_seed(0)
    y = (
        kornia.filters.gaussian_blur2d(x, (7, 7), (1.0, 1.0))
        + 0.15 * torch.randn(x.shape, generator=g)
    ).clamp(-1, 1)
    result, _ = run_builtin(
        "restore", reg, prior, Observation(image=y), [0, 1, 2, 3], ["sampler.steps=50"]
    )
    ours, degraded = psnr(result.image, x).mean(), psnr(y, x).mean()
    assert ours > degraded + 1.0, (ours, degraded)


def test_old_photo_keeps_lightness_outside_the_scratches(reg, prior):
    x = faces("hq", 2)
    gray = x.mean(1, keepdim=True).expand_as(x).contiguous()
    mask = box_mask(2, (10, 20), (10, 50))
    y = gray * (1 - mask) + mask
    result, ctx = run_builtin(
        "old-photo", reg, prior, Observation(image=y, mask=mask), [0, 1], ["sampler.steps=50"]
    )
    assert ctx.report["restorer_calls"] == {"lightness": 1}
    recipe = load_recipe("old-photo", reg, prior_name=prior.name, prior_kind=prior.kind)
    blurred = recipe.stages[0].restorer.build(reg)(y)  # the recipe's restorer for this prior
    known = 1 - mask
    gray_out = result.image.mean(1, keepdim=True)
    lightness = psnr(gray_out, blurred[:, :1], known)
    assert lightness.min() >= 22.0, lightness
    # no guidance in the scratch: the prior fills it instead of copying the white damage
    scratch = (gray_out * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
    assert (scratch < 0.7).all(), scratch
    mean, _ = channel_stats(result.image)
    assert (mean[:, 0] > mean[:, 2]).all()  # CelebA-HQ's warm tone: more red than blue


@pytest.fixture(scope="module")
def tiny_diffusers(tmp_path_factory):
    from guidestack.plugins.priors.diffusers_prior import load_diffusers_prior
    from guidestack.plugins.priors.tiny import save_tiny_unet

    folder = save_tiny_unet(tmp_path_factory.mktemp("unet") / "tiny", sample_size=16)
    return load_diffusers_prior(str(folder))


@pytest.mark.parametrize("name", ["restore", "colorize", "inpaint", "old-photo"])
def test_recipes_run_with_paper_defaults_on_a_diffusers_prior(reg, tiny_diffusers, name):
    """A diffusers prior gets the paper's rules and scales (no per-prior table applies); the
    random tiny UNet only proves the plumbing, not the quality."""
    prior = tiny_diffusers
    recipe = load_recipe(
        name, reg, ["sampler.steps=8"], prior_name=prior.name, prior_kind=prior.kind
    )
    paper = {
        "restore": ("mean_shift", 0.1),
        "colorize": ("dynamic_channel", 0.01),
        "inpaint": ("dynamic", 0.01),
        "old-photo": ("dynamic_channel", 0.002),
    }[name]
    assert (recipe.guidance.rule, recipe.guidance.scale) == paper
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:8, 4:12] = 1
    result, ctx = run_recipe(recipe, prior, Observation(image=x, mask=mask), [0, 1], reg)
    assert result.image.shape == x.shape and torch.isfinite(result.image).all()
    assert ctx.model_calls == 8
