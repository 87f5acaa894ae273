"""The standard zero-shot solvers (DPS, DDNM) on the exact Gaussian prior: measurement
consistency, agreement with the closed-form posterior mean, the x_t-gradient target against
finite differences, DDNM+ and time travel, batches, costs in run.json, and the recipes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import EXAMPLES

import guidestack as gs
from guidestack.engine import steps
from guidestack.engine.config import GuidanceConfig, SamplerConfig
from guidestack.engine.context import Observation, RunContext, StepState
from guidestack.engine.errors import RecipeError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.recipe import validate
from guidestack.engine.refs import DegradationRef
from guidestack.engine.run import make_generators, run_recipe
from guidestack.engine.sampler import Loop
from guidestack.engine.stage import GuidanceOptions, Stage
from guidestack.engine.stageset import StageSet
from guidestack.io.images import read_image, to_square
from guidestack.plugins.priors.diffusers_prior import DiffusersPrior
from guidestack.plugins.priors.tiny import build_tiny_unet, tiny_scheduler
from guidestack.testing import tiny_prior

SIDE = 32
SEEDS = list(range(16))
INPAINT = {"use": "box-mask", "box": (0.25, 0.25, 0.5, 0.5)}
SR4 = {"use": "downsample", "factor": 4}


@pytest.fixture(scope="module")
def prior():
    return tiny_prior(SIDE)


def prior_sample(prior, seed: int) -> torch.Tensor:
    return prior.sample(1, [torch.Generator().manual_seed(seed)]).float()


def held_out(name: str = "astronaut") -> torch.Tensor:
    """A public-domain face the shipped prior was not fitted on, at the tiny prior's size."""
    return to_square(read_image(EXAMPLES / f"{name}.png").tensor, SIDE)[0][None]


def bound(registry, spec: dict, like: torch.Tensor):
    op = DegradationRef(**spec).build(registry)
    op.prepare(Observation(image=like))
    return op


def solve(registry, prior, stage: dict, sampler: dict, guidance: dict, x, seeds=SEEDS):
    """Run one solver on the measurement of the clean ``x`` ``[1, C, S, S]``, one sample per
    seed; the observation holds y at its own size (``measurement``) and as a picture."""
    op = bound(registry, stage["operator"], x)
    y = op(x)
    n = len(seeds)
    picture = op.simulate(x) if y.shape[-1] != x.shape[-1] else y.expand(-1, 3, -1, -1)
    obs = Observation(
        image=picture.expand(n, -1, -1, -1).contiguous(),
        measurement=y.expand(n, -1, -1, -1).contiguous() if y.shape[-1] != x.shape[-1] else None,
    )
    raw = {"description": "t", "sampler": sampler, "guidance": guidance, "stage": [stage]}
    result, ctx = run_recipe(validate(raw, registry, "<t>"), prior, obs, list(seeds), registry)
    return result.image, ctx, op, y


def ddnm(operator: dict, steps: int = 100, **options):
    stage = {"use": "ddnm", "operator": operator, **options}
    return stage, {"kind": "ddpm", "steps": steps}, {}


def dps(operator: dict, steps: int = 200, scale: float = 5.0):
    stage = {"use": "dps", "operator": operator}
    return (
        stage,
        {"kind": "ddpm", "steps": steps},
        {"target": "xt", "rule": "gradient", "scale": scale},
    )


def posterior_mean(prior, op, y: torch.Tensor) -> torch.Tensor:
    """The closed-form E[x | y] for the linear H (dense, the tiny prior is small)."""
    d = prior.dim
    basis = torch.eye(d, dtype=torch.float64).view(d, prior.channels, SIDE, SIDE)
    a = op(basis).reshape(d, -1).T
    seen = a.abs().sum(dim=1) > 0  # a mask's measurement space is the known pixels only
    return prior.posterior_mean_linear(y.reshape(1, -1)[:, seen].double(), a[seen]).float()


# --- DDNM: exact consistency --------------------------------------------------------------------


@pytest.mark.parametrize(
    "operator",
    [
        {"use": "mask"},
        SR4,
        {"use": "grayscale", "weights": "mean"},
        {"use": "compose", "ops": [{"use": "grayscale"}, {"use": "downsample", "factor": 2}]},
    ],
    ids=["inpaint", "sr4", "colorize", "gray-sr2"],
)
def test_ddnm_output_is_consistent_with_a_noiseless_linear_measurement(registry, prior, operator):
    """Measured: 4e-10 (inpaint), 9e-8 (sr4), 6e-8 (colorize), 7e-8 (gray-sr2).  The face is
    scaled into [-0.5, 0.5]: the engine clamps outputs to [-1, 1], and where the consistent
    x0 leaves that range (a bright block with detail, a saturated colour shifted to the gray)
    the clamp alone costs 2e-4, 1e-3 and 1e-4 on the unscaled sample."""
    x = 0.5 * prior_sample(prior, 3).clamp(-1, 1)
    mask = torch.zeros(1, 1, SIDE, SIDE)
    mask[..., 8:20, 6:26] = 1
    op = DegradationRef(**operator).build(registry)
    op.prepare(Observation(image=x, mask=mask))
    y = op(x)
    small = y.shape[-1] != SIDE
    obs = Observation(
        image=op.simulate(x) if small else x,
        mask=mask,
        measurement=y if small else None,
    )
    raw = {"description": "t", "sampler": {"kind": "ddpm", "steps": 50},
           "stage": [{"use": "ddnm", "operator": operator}]}  # fmt: skip
    result, ctx = run_recipe(validate(raw, registry, "<t>"), prior, obs, [0], registry)
    relative = float((op(result.image) - y).norm() / y.norm())
    assert relative < 1e-4, relative
    (reported,) = ctx.report["ddnm"]["consistency"]
    assert reported == pytest.approx(relative, abs=1e-6)
    assert ctx.model_calls == 50 and "guidance" not in ctx.report  # no backward pass


# --- DPS and DDNM against the exact posterior mean ------------------------------------------------


@pytest.mark.parametrize("problem", ["inpaint", "sr4"])
@pytest.mark.parametrize("truth", ["prior-sample", "held-out"])
@pytest.mark.parametrize("method", ["ddnm", "dps"])
def test_mean_over_16_seeds_is_closer_to_the_posterior_mean_than_to_the_prior_mean(
    registry, prior, problem, truth, method
):
    """Measured (32x32 tiny prior, MSE of the 16-seed mean to the posterior mean / to the prior
    mean): DDNM (100 steps) 0.00017 / 0.125 and 0.00095 / 0.112 on a prior sample (inpaint,
    sr4), 0.00017 / 0.252 and 0.0022 / 0.207 on a held-out face; DPS (200 steps, zeta 5)
    0.00024 / 0.127, 0.00062 / 0.118, 0.0016 / 0.234, 0.031 / 0.140 (held-out SR is the hard
    case: the Gaussian denoiser passes little gradient to its isotropic floor, docs/solvers.md)."""
    x = prior_sample(prior, 100).clamp(-1, 1) if truth == "prior-sample" else held_out()
    operator = INPAINT if problem == "inpaint" else SR4
    stage, sampler, guidance = (ddnm if method == "ddnm" else dps)(operator)
    out, ctx, op, y = solve(registry, prior, stage, sampler, guidance, x)
    mean = out.mean(dim=0, keepdim=True)
    post = posterior_mean(prior, op, y)
    prior_mean = prior.mean.view(1, 3, SIDE, SIDE).float()
    to_post = float((mean - post).pow(2).mean())
    to_prior = float((mean - prior_mean).pow(2).mean())
    assert to_post < to_prior, (to_post, to_prior)
    assert to_post < 0.25 * to_prior, (to_post, to_prior)


# --- the x_t target ----------------------------------------------------------------------------


class MeasurementLoss(Stage):
    """``||H(x0) - y||^2`` on x0, for the gradient checks."""

    name = "measurement-loss"
    Options = GuidanceOptions

    def __init__(self, op, y):
        super().__init__(GuidanceOptions(use=self.name))
        self.op, self.y = op, y

    @hookimpl
    def guidance_loss(self, ctx, state):
        return (self.op(state.x0) - self.y).pow(2).flatten(1).sum(1)


def one_step_gradient(prior, stage, x_t, t, target, clip=False):
    sampler = SamplerConfig(kind="ddpm", steps=10, clip_x0=clip)
    guidance = GuidanceConfig(rule="gradient", target=target, scale=1.0)
    ctx = RunContext(
        prior=prior,
        observation=Observation(image=x_t),
        timesteps=[t, 0],
        sampler=sampler,
        guidance=guidance,
        generators=make_generators([0] * x_t.shape[0], "cpu"),
        dtype=x_t.dtype,
    )
    loop = Loop(ctx, StageSet([stage]))
    state = StepState(t=t, t_prev=0, index=0, x_t=x_t)
    loop.step(state, loop.table([t, 0])[0])
    return state.grad, ctx


def test_xt_gradient_matches_finite_differences_through_the_denoiser(registry):
    prior = tiny_prior(16, dtype=torch.float64)
    x = prior.sample(2, [torch.Generator().manual_seed(s) for s in (1, 2)])
    op = bound(registry, SR4, x)
    y = op(x)
    stage = MeasurementLoss(op, y)
    g = torch.Generator().manual_seed(0)
    t = 400
    x_t = prior.sample(2, [torch.Generator().manual_seed(s) for s in (5, 6)], t=t)
    grad, ctx = one_step_gradient(prior, stage, x_t, t, "xt")
    assert ctx.report["guidance"]["backward_through_denoiser"] == 1

    def loss(z):
        tr = steps.transition(ctx.abar(t), ctx.abar(0), kind="ddpm", dtype=torch.float64)
        x0 = steps.predict_x0(z, prior(z, t).eps, tr, clip=False)
        return stage.guidance_loss(ctx, type("S", (), {"x0": x0})()).sum()

    h = 1e-4
    for _ in range(4):
        v = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
        numeric = (loss(x_t + h * v) - loss(x_t - h * v)) / (2 * h)
        analytic = (grad * v).sum()
        assert abs(float(numeric - analytic)) < 1e-3 * abs(float(analytic))
    # and it is not the x0 target's gradient: the denoiser's Jacobian is far from a scale
    grad_x0, _ = one_step_gradient(prior, stage, x_t, t, "x0")
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), grad_x0.flatten(), dim=0)
    assert float(cosine) < 0.95


def test_xt_target_costs_a_backward_pass_through_the_network_reported_in_run_json(registry):
    unet = DiffusersPrior(build_tiny_unet(16), dict(tiny_scheduler().config))
    x = torch.zeros(1, 3, 16, 16)
    op = bound(registry, SR4, x)
    facts = {}
    for target in ("x0", "xt"):
        _, ctx = one_step_gradient(unet, MeasurementLoss(op, op(x) + 0.1), x, 500, target)
        facts[target] = ctx.report["guidance"]
    assert facts["x0"]["backward_through_denoiser"] == 0
    assert facts["xt"]["backward_through_denoiser"] == 1
    # the network's activations: measured 2.9 MB against 1.5 kB for the x0 target
    assert facts["xt"]["graph_bytes_max"] > 100 * facts["x0"]["graph_bytes_max"]
    prior = gs.load_prior("gaussian-faces-64")
    recipe = gs.load_recipe("dps-inpaint", set={"sampler.steps": 5})
    out = gs.run(recipe, prior, EXAMPLES / "astronaut_masked.png",
                 mask=EXAMPLES / "astronaut_mask.png", upsampler="bicubic")  # fmt: skip
    report = out.entry["stages"]["guidance"]
    assert report["target"] == "xt" and report["backward_through_denoiser"] == 5
    assert report["graph_bytes_max"] > 0 and out.entry["model_calls"] == 5


def test_guidance_options_are_checked(registry):
    with pytest.raises(ValueError, match='rule "x0"'):
        GuidanceConfig(rule="x0", target="xt")
    raw = {"description": "t", "sampler": {"kind": "ddpm", "steps": 3},
           "stage": [{"use": "dps", "operator": SR4}]}  # fmt: skip
    prior = tiny_prior(16)
    obs = Observation(image=torch.zeros(1, 3, 16, 16))
    with pytest.raises(RecipeError, match='target = "xt" and rule = "gradient"'):
        run_recipe(validate(raw, registry, "<t>"), prior, obs, [0], registry)
    raw["stage"][0]["paper_update"] = False  # the DPS loss under PGDiff's rule, x0 target
    run_recipe(validate(raw, registry, "<t>"), prior, obs, [0], registry)


# --- DDNM+ and time travel ---------------------------------------------------------------------


def test_ddnm_plus_weights_follow_eq_19(registry, prior):
    x = prior_sample(prior, 0)
    stage = registry.stage("ddnm")(
        registry.stage("ddnm").Options.model_validate(
            {"use": "ddnm", "operator": {**SR4, "noise": 0.2}}
        )
    )
    ctx = RunContext(
        prior=prior,
        observation=Observation(image=op_simulate(registry, x)),
        timesteps=[999],
        sampler=SamplerConfig(kind="ddpm"),
        guidance=GuidanceConfig(),
        generators=make_generators([0], "cpu"),
        registry=registry,
    )
    stage.setup(ctx)
    for t, t_prev in ((900, 890), (300, 290), (20, 10), (10, -1)):
        a, sigma = stage.coefficients(ctx, t, t_prev)
        abar_t, abar_p = ctx.abar(t), ctx.abar(t_prev)
        if t_prev >= 0:
            beta = 1 - abar_t / abar_p
            assert a == pytest.approx(math.sqrt(abar_p) * beta / (1 - abar_t))
            assert sigma == pytest.approx(math.sqrt(beta * (1 - abar_p) / (1 - abar_t)))
        lam, ratio = stage.weights(ctx, t, t_prev)
        if sigma >= a * 0.2:
            assert lam == 1 and ratio == pytest.approx(math.sqrt(sigma**2 - (a * 0.2) ** 2) / sigma)
        else:
            assert lam == pytest.approx(sigma / (a * 0.2)) and ratio == 0
    assert stage.weights(ctx, 10, -1) == (0.0, 0.0)  # the last step trusts the prior, not y


def op_simulate(registry, x):
    return bound(registry, SR4, x).simulate(x)


def test_ddnm_plus_denoises_what_ddnm_copies(registry, prior):
    """y = H x + n with sigma 0.2: plain DDNM puts the noise into the range space, DDNM+ (the
    operator's noise = 0.2) removes most of it.  Measured MSE to the truth: 0.019 / 0.011."""
    x = prior_sample(prior, 7).clamp(-1, 1)
    op = bound(registry, SR4, x)
    noisy = op(x) + 0.2 * torch.randn(op(x).shape, generator=torch.Generator().manual_seed(1))
    errors = {}
    for name, noise in (("ddnm", 0.0), ("ddnm+", 0.2)):
        stage = {"use": "ddnm", "operator": {**SR4, "noise": noise}}
        raw = {"description": "t", "sampler": {"kind": "ddpm", "steps": 100}, "stage": [stage]}
        n = 8
        obs = Observation(image=to_square(noisy, SIDE)[0].expand(n, -1, -1, -1),
                          measurement=noisy.expand(n, -1, -1, -1))  # fmt: skip
        result, _ = run_recipe(validate(raw, registry, "<t>"), prior, obs, list(range(n)), registry)
        errors[name] = float((result.image - x).pow(2).mean())
    assert errors["ddnm+"] < 0.8 * errors["ddnm"], errors


def expected_travel(n: int, length: int, repeat: int) -> list[int]:
    """Grid positions whose model call a time-travelling run makes, in order (RePaint's
    schedule as the DDNM paper describes it, written out independently)."""
    calls = []
    pending = {j: repeat - 1 for j in range(0, n - length, length)}
    position = 0
    while position < n:
        calls.append(position)
        position += 1
        j = n - 1 - position
        while position < n and pending.get(j, 0) > 0:
            pending[j] -= 1
            calls.extend(range(position - length, position))
    return calls


@pytest.mark.parametrize(("length", "repeat"), [(1, 3), (5, 2), (3, 1)])
def test_time_travel_follows_repaints_schedule(registry, prior, length, repeat):
    x = prior_sample(prior, 2).clamp(-1, 1)
    stage, sampler, _ = ddnm(INPAINT, steps=20, travel_length=length, travel_repeat=repeat)
    visited = []
    original = prior.forward

    def spy(x_t, t):
        visited.append(int(torch.as_tensor(t).reshape(-1)[0]))
        return original(x_t, t)

    prior.forward = spy
    try:
        out, ctx, op, y = solve(registry, prior, stage, sampler, {}, x, seeds=[0])
    finally:
        del prior.forward
    grid = ctx.report["grid"]
    assert visited == [grid[p] for p in expected_travel(len(grid), length, repeat)]
    assert ctx.model_calls == len(visited)
    assert ctx.report["ddnm"]["travelled_steps"] == len(visited) - len(grid)
    assert float((op(out) - y).abs().max()) < 1e-5  # still consistent


# --- batches, mixes, recipes ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ddnm", "dps"])
def test_a_batch_equals_single_runs(registry, prior, method):
    x = prior_sample(prior, 4).clamp(-1, 1)
    stage, sampler, guidance = (ddnm if method == "ddnm" else dps)(INPAINT, steps=20)
    batch, *_ = solve(registry, prior, stage, sampler, guidance, x, seeds=[3, 4])
    single, *_ = solve(registry, prior, stage, sampler, guidance, x, seeds=[4])
    assert float((batch[1:] - single).abs().max()) < 1e-5


def test_operator_forms_of_unmasked_region_and_paste_known_match_the_mask_forms(registry, prior):
    x = prior_sample(prior, 5).clamp(-1, 1)
    mask = torch.zeros(2, 1, SIDE, SIDE)
    mask[:, :, 10:22, 8:24] = 1
    obs = Observation(image=x.expand(2, -1, -1, -1) * (1 - mask), mask=mask)
    outs = []
    for operator in (None, {"use": "mask"}):
        extra = {} if operator is None else {"operator": operator}
        raw = {"description": "t", "sampler": {"kind": "ddpm", "steps": 20},
               "guidance": {"rule": "dynamic", "scale": 0.5},
               "stage": [{"use": "unmasked-region", **extra}, {"use": "paste-known", "every_step": True, **extra}]}  # fmt: skip
        result, _ = run_recipe(validate(raw, registry, "<t>"), prior, obs, [0, 1], registry)
        outs.append(result.image)
    assert float((outs[0] - outs[1]).abs().max()) < 1e-5
    assert float(((outs[1] - obs.image) * (1 - mask)).abs().max()) < 1e-6


def test_new_recipes_run_on_the_offline_prior(registry):
    prior = gs.load_prior("gaussian-faces-64")
    quick = {"dps-inpaint": 20, "dps-sr4": 20}
    for name in ("ddnm-inpaint", "ddnm-sr4", "ddnm-colorize", "dps-inpaint", "dps-sr4",
                 "old-photo-ddnm", "difface-ddnm-inpaint"):  # fmt: skip
        recipe = gs.load_recipe(name, set={"sampler.steps": quick.get(name, 100)})
        example = recipe.example
        out = gs.run(recipe, prior, example["image"], mask=example.get("mask"),
                     upsampler="bicubic", output_size="prior")  # fmt: skip
        assert torch.isfinite(out.image).all() and out.image.shape == (3, 64, 64), name
        if name == "difface-ddnm-inpaint":
            assert out.entry["model_calls"] == 49  # from t = 480 on the 100-step grid
            assert out.entry["stages"]["ddnm"]["consistency"][0] < 1e-5


def test_sr_consistency_with_y_at_16x16_is_at_least_35_db(registry):
    """ddnm-sr4 and shred-sr4 as shipped for the Gaussian prior, on the 16x16 example photo
    kept at 16x16.  Measured: 50.2 dB (DDNM), 44.6 dB (SHRED)."""
    prior = gs.load_prior("gaussian-faces-64")
    photo = read_image(EXAMPLES / "astronaut_lr16.png").tensor[None]
    op = DegradationRef(**SR4).build(registry)
    for name in ("ddnm-sr4", "shred-sr4"):
        out = gs.run(name, prior, photo[0], seed=0, upsampler="bicubic", output_size="prior")
        mse = float((op(out.restored[None]) - photo).pow(2).mean())
        psnr = 10 * math.log10(4.0 / mse)
        assert psnr >= 35.0, (name, psnr)
