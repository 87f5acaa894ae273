"""The step kernel against diffusers' schedulers, guided-diffusion's tables and closed-form oracles.

Every comparison goes through the functions the sampler loop, ODEdit and SHRED call
(``steps.transitions``/``transition``, ``predict_x0``, ``eps_from_x0``, ``moments``, ``step``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

from guidestack.engine import steps
from guidestack.engine.prior import linear_alphas_cumprod
from guidestack.engine.schedule import ddim_timesteps, respaced_timesteps, step_pairs

ACP = linear_alphas_cumprod()  # float64, the prior's schedule
SHAPE = (2, 3, 6, 6)
TOL = 1e-5


def abar(t: int, final: float = 1.0) -> float:
    return float(ACP[t]) if t >= 0 else final


def tr64(a_t: float, a_prev: float = 1.0, **kw) -> steps.Transition:
    """A transition with float64 coefficients (the tests compare formulas in float64)."""
    return steps.transition(a_t, a_prev, dtype=torch.float64, **kw)


def model_eps(x: torch.Tensor, t: int, s: float = 0.7) -> torch.Tensor:
    """A denoiser-like eps: exact for data ~ N(0, s^2 I) plus a smooth nonlinear perturbation."""
    a = abar(t)
    exact = math.sqrt(1 - a) * x / (a * s * s + 1 - a)
    return exact + 0.1 * torch.tanh(2 * x) * math.sin(t / 37.0)


def model_v(x: torch.Tensor, t: int) -> torch.Tensor:
    """Learned-range variance values in [-1, 1]."""
    return torch.tanh(0.7 * x + t / 500.0)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference, relative to the reference's size when it is above 1 (raw x0 is ~100)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def float64_schedule(sched):
    """Make a diffusers scheduler do its alpha arithmetic in float64 on the prior's schedule.

    Out of the box diffusers keeps alphas_cumprod in float32 and computes
    beta = 1 - abar_t / abar_prev in float32, which loses ~4 digits for adjacent steps; we
    compare formulas, so both sides get the same float64 alpha_bar values.
    """
    sched.alphas_cumprod = ACP.clone()
    if hasattr(sched, "final_alpha_cumprod"):
        final = sched.final_alpha_cumprod
        sched.final_alpha_cumprod = torch.tensor(
            1.0 if float(final) == 1.0 else abar(0), dtype=torch.float64
        )
    if hasattr(sched, "initial_alpha_cumprod"):
        initial = sched.initial_alpha_cumprod
        sched.initial_alpha_cumprod = torch.tensor(
            1.0 if float(initial) == 1.0 else abar(0), dtype=torch.float64
        )
    if hasattr(sched, "one"):
        sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


# --- DDIM -------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("alpha_to_one", [True, False])
@pytest.mark.parametrize("clipped_eps", [False, True])
def test_ddim_trajectory_matches_diffusers(eta, clip, alpha_to_one, clipped_eps):
    sched = float64_schedule(DDIMScheduler(clip_sample=clip, set_alpha_to_one=alpha_to_one))
    sched.set_timesteps(50)
    grid = [int(t) for t in sched.timesteps]
    assert grid == ddim_timesteps(50)
    final = 1.0 if alpha_to_one else abar(0)  # how our last step maps onto final_alpha_cumprod
    gen = torch.Generator().manual_seed(1)
    theirs = ours = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    worst = 0.0
    for t, t_prev in step_pairs(grid):
        noise = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
        ref = sched.step(
            model_eps(theirs, t),
            t,
            theirs,
            eta=eta,
            use_clipped_model_output=clipped_eps,
            variance_noise=noise,
        )
        out = steps.step(
            ours,
            model_eps(ours, t),
            tr64(abar(t), abar(t_prev, final), eta=eta),
            noise=noise,
            clip=clip,
            rederive=clipped_eps,
        )
        worst = max(worst, rel(out.x_prev, ref.prev_sample), rel(out.x0, ref.pred_original_sample))
        theirs, ours = ref.prev_sample, out.x_prev
    assert worst < TOL
    assert torch.isfinite(ours).all()


def test_ddim_float32_defaults_match_diffusers_stepwise():
    """diffusers exactly as shipped (float32 alphas), float32 images, each step from its input."""
    sched = DDIMScheduler()  # clip_sample=True, set_alpha_to_one=True
    sched.set_timesteps(25)
    acp = sched.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(SHAPE, generator=gen)
    worst = 0.0
    for t, t_prev in step_pairs([int(t) for t in sched.timesteps]):
        noise = torch.randn(SHAPE, generator=gen)
        eps = model_eps(x, t)
        ref = sched.step(eps, t, x, eta=0.5, variance_noise=noise)
        a_prev = float(acp[t_prev]) if t_prev >= 0 else 1.0
        tr = steps.transition(float(acp[t]), a_prev, eta=0.5)  # float32, as the loop's
        out = steps.step(x, eps, tr, noise=noise, rederive=False)
        assert out.x_prev.dtype == torch.float32
        worst = max(worst, rel(out.x_prev, ref.prev_sample), rel(out.x0, ref.pred_original_sample))
        x = ref.prev_sample
    assert worst < TOL


def test_ddim_eta_one_with_clipped_eps_is_the_ddpm_posterior():
    gen = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    for t, t_prev in [(999, 979), (500, 480), (40, 0), (1, 0)]:
        eps = model_eps(x, t)
        zeros = torch.zeros_like(x)
        ddim = steps.step(x, eps, tr64(abar(t), abar(t_prev), eta=1.0), noise=zeros)
        ddpm = steps.step(x, eps, tr64(abar(t), abar(t_prev), kind="ddpm"), noise=zeros)
        assert (ddim.x0.abs() <= 1).all() and (ddim.mean - ddpm.mean).abs().max() < 1e-12
        assert torch.allclose(ddim.std, ddpm.std, rtol=1e-12, atol=0)
        assert torch.allclose(ddim.std**2, ddpm.variance, rtol=1e-10, atol=0)
    # without re-deriving eps the clipped step is a different rule
    eps = model_eps(x, 999)
    zeros = torch.zeros_like(x)
    plain = steps.step(x, eps, tr64(abar(999), abar(979), eta=1.0), noise=zeros, rederive=False)
    ddpm = steps.step(x, eps, tr64(abar(999), abar(979), kind="ddpm"), noise=zeros)
    assert (plain.mean - ddpm.mean).abs().max() > 1e-3


def test_sigma_ddim_matches_diffusers_variance():
    sched = float64_schedule(DDIMScheduler())
    for t, t_prev in [(999, 989), (500, 300), (20, 0), (5, -1)]:
        ref = sched._get_variance(t, t_prev).sqrt() * 0.3
        ours = tr64(abar(t), abar(t_prev), eta=0.3).std
        assert abs(float(ours) - float(ref)) < 1e-14
    assert float(tr64(abar(10), 1.0, eta=1.0).std) == 0.0
    # eta = 1: the posterior std sqrt(beta_tilde)
    a_t, a_p = abar(300), abar(250)
    beta = 1 - a_t / a_p
    assert math.isclose(
        float(tr64(a_t, a_p, eta=1.0).std) ** 2, beta * (1 - a_p) / (1 - a_t), rel_tol=1e-12
    )


def test_ddim_invert_matches_diffusers_inverse_scheduler():
    for alpha_to_one in (True, False):
        sched = float64_schedule(
            DDIMInverseScheduler(clip_sample=False, set_alpha_to_one=alpha_to_one)
        )
        sched.set_timesteps(20)
        ratio = 1000 // 20
        gen = torch.Generator().manual_seed(4)
        theirs = ours = torch.rand(SHAPE, generator=gen, dtype=torch.float64) * 2 - 1
        worst = 0.0
        for t in [int(t) for t in sched.timesteps]:  # 0, 50, ..., 950: target levels
            current = abar(t - ratio, 1.0 if alpha_to_one else abar(0))
            eps = model_eps(theirs, t)
            theirs = sched.step(eps, t, theirs).prev_sample
            up = tr64(current, abar(t))  # upwards, eta 0: DDIM inversion
            ours = steps.step(ours, model_eps(ours, t), up, clip=False, rederive=False).x_prev
            worst = max(worst, rel(ours, theirs))
        assert worst < TOL


def _gaussian_eps(x: torch.Tensor, t: int, s: float) -> torch.Tensor:
    """The exact eps for data ~ N(0, s^2 I): x_t ~ N(0, (abar s^2 + 1 - abar) I)."""
    a = abar(t)
    return math.sqrt(1 - a) * x / (a * s * s + 1 - a)


def _round_trip(num_steps: int, s: float, x0: torch.Tensor) -> tuple[float, float]:
    grid = ddim_timesteps(num_steps)  # 990 ... 0 for 100 steps
    up = grid[::-1]
    x = x0
    for t, t_next in zip(up, up[1:], strict=False):
        inv = tr64(abar(t), abar(t_next))
        x = steps.step(x, _gaussian_eps(x, t, s), inv, clip=False, rederive=False).x_prev
    top = grid[0]
    # the exact probability-flow map of an isotropic Gaussian scales by the marginal std ratio
    scale = math.sqrt((abar(top) * s * s + 1 - abar(top)) / (abar(0) * s * s + 1 - abar(0)))
    latent_err = rel(x, scale * x0)
    for t, t_prev in zip(grid, grid[1:], strict=False):  # back down to t = 0
        x = steps.step(x, _gaussian_eps(x, t, s), tr64(abar(t), abar(t_prev)), clip=False).x_prev
    return latent_err, (x - x0).abs().max().item()


def test_inversion_then_sampling_round_trip():
    s = 0.5
    gen = torch.Generator().manual_seed(5)
    x0 = s * torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    latent_100, back_100 = _round_trip(100, s, x0)
    latent_400, back_400 = _round_trip(400, s, x0)
    # measured: 0.028 / 0.072 (100 steps), 0.0056 / 0.0147 (400 steps); |x0| is up to ~1.3
    assert latent_100 < 0.04 and back_100 < 0.1
    assert latent_400 < 0.008 and back_400 < 0.02
    # first order in the step size: 4x the steps, about 4x smaller errors
    assert back_400 < back_100 / 3 and latent_400 < latent_100 / 3


# --- DDPM -------------------------------------------------------------------------------


def _ddpm_trajectory(kind: str, clip: bool, grid: list[int], dtype=torch.float64) -> float:
    sched = float64_schedule(DDPMScheduler(variance_type=kind, clip_sample=clip))
    sched.set_timesteps(timesteps=grid)
    gen_theirs = torch.Generator().manual_seed(6)
    gen_ours = torch.Generator().manual_seed(6)
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=dtype)
    theirs = ours = start
    worst = 0.0
    # the sampler's own coefficient table for this grid
    table = steps.transitions(ACP, grid, kind="ddpm", variance=kind, dtype=dtype)
    for (t, _), tr in zip(step_pairs(grid), table, strict=True):
        eps_t = model_eps(theirs, t)
        output = torch.cat([eps_t, model_v(theirs, t)], 1) if kind == "learned_range" else eps_t
        ref = sched.step(output, t, theirs, generator=gen_theirs)
        noise = torch.randn(SHAPE, generator=gen_ours, dtype=dtype) if t > 0 else None
        values = model_v(ours, t) if kind == "learned_range" else None
        out = steps.step(
            ours, model_eps(ours, t), tr, noise=noise, clip=clip, variance_values=values
        )
        worst = max(worst, rel(out.x_prev, ref.prev_sample), rel(out.x0, ref.pred_original_sample))
        theirs, ours = ref.prev_sample, out.x_prev
    assert torch.isfinite(ours).all()
    return worst


@pytest.mark.parametrize("kind", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("respacing", ["100", "ddim25", "10,15,20"])
def test_ddpm_respaced_trajectory_matches_diffusers(kind, clip, respacing):
    assert _ddpm_trajectory(kind, clip, respaced_timesteps(respacing)) < TOL


def test_ddpm_full_1000_step_trajectory_matches_diffusers():
    assert _ddpm_trajectory("learned_range", True, list(range(999, -1, -1))) < TOL
    assert _ddpm_trajectory("fixed_small", True, respaced_timesteps("50"), torch.float32) < TOL


def _guided_diffusion_tables(grid_ascending: list[int]) -> dict[str, np.ndarray]:
    """guided-diffusion's SpacedDiffusion tables, written from its formulas (float64 numpy)."""
    kept = ACP.numpy()[grid_ascending]
    betas = 1 - kept / np.append(1.0, kept[:-1])
    alphas_cumprod = np.cumprod(1 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
    return {
        "abar": alphas_cumprod,
        "betas": betas,
        "posterior_variance": posterior_variance,
        "log_clipped": np.log(np.append(posterior_variance[1], posterior_variance[1:])),
        "coef1": betas * np.sqrt(prev) / (1 - alphas_cumprod),
        "coef2": (1 - prev) * np.sqrt(1 - betas) / (1 - alphas_cumprod),
        "large": np.append(posterior_variance[1], betas[1:]),
    }


def _ddpm(a_t: float, a_prev: float, kind: str, above: float | None = None) -> steps.Transition:
    return tr64(a_t, a_prev, kind="ddpm", variance=kind, abar_above=above)


def test_ddpm_variances_match_guided_diffusion_tables():
    grid = respaced_timesteps("ddim25")[::-1]  # ascending: index 0 is t = 0
    gd = _guided_diffusion_tables(grid)
    v = torch.linspace(-1, 1, 5, dtype=torch.float64)
    x0 = torch.linspace(-1, 1, 5, dtype=torch.float64)
    x_t = torch.linspace(2, -3, 5, dtype=torch.float64)
    for i, t in enumerate(grid):
        a_t = abar(t)
        a_prev = abar(grid[i - 1]) if i > 0 else 1.0
        above = abar(grid[i + 1]) if i + 1 < len(grid) else None
        small = _ddpm(a_t, a_prev, "fixed_small", above)
        mean, _, variance = steps.moments(small, x_t, x0, None)
        assert torch.allclose(
            mean, gd["coef1"][i] * x0 + gd["coef2"][i] * x_t, rtol=1e-9, atol=1e-12
        )
        assert math.isclose(
            float(variance), gd["posterior_variance"][i], rel_tol=1e-9, abs_tol=1e-15
        )
        learned = _ddpm(a_t, a_prev, "learned_range", above)
        if above is not None:
            assert math.isclose(float(learned.log_floor), gd["log_clipped"][i], rel_tol=1e-9)
            var_l = float(_ddpm(a_t, a_prev, "fixed_large", above).variance)
            assert math.isclose(var_l, gd["large"][i], rel_tol=1e-9)
            assert math.isclose(math.log(var_l), math.log(gd["large"][i]), rel_tol=1e-9)
            _, _, var_r = steps.moments(learned, x_t, x0, None, v)
            frac = (v + 1) / 2
            expect = frac * math.log(gd["betas"][i]) + (1 - frac) * gd["log_clipped"][i]
            assert torch.allclose(var_r.log(), expect, rtol=1e-9)
            assert torch.allclose(var_r, expect.exp())
    # the final step: beta_tilde is 0 and the log variance is clipped to the step above's
    assert float(_ddpm(abar(0), 1.0, "fixed_small", abar(grid[1])).variance) == 0.0
    final = _ddpm(abar(0), 1.0, "learned_range", abar(grid[1]))
    assert math.isclose(float(final.log_floor), gd["log_clipped"][0], rel_tol=1e-9)
    # without abar_above the final step follows diffusers (variance clamped at 1e-20)
    log_small = float(_ddpm(abar(0), 1.0, "learned_range").log_floor)
    assert math.isclose(log_small, math.log(1e-20), rel_tol=1e-12)
    large = float(_ddpm(abar(0), 1.0, "fixed_large").variance)
    assert math.isclose(large, 1 - abar(0), rel_tol=1e-12)


def test_grid_table_equals_single_transitions():
    """The vectorised per-run table is bit for bit the per-step construction (float64 and cast)."""
    for kind, variance in [
        ("ddim", "fixed_small"),
        ("ddpm", "fixed_large"),
        ("ddpm", "learned_range"),
    ]:
        grid = respaced_timesteps("10,15,20")
        for dtype in (torch.float32, torch.float64, torch.float16):
            table = steps.transitions(ACP, grid, kind=kind, eta=0.6, variance=variance, dtype=dtype)
            for i, ((t, t_prev), tr) in enumerate(zip(step_pairs(grid), table, strict=True)):
                above = abar(grid[i - 1]) if i > 0 else None
                one = steps.transition(
                    abar(t),
                    abar(t_prev),
                    kind=kind,
                    eta=0.6,
                    variance=variance,
                    abar_above=above,
                    dtype=dtype,
                )
                for name in (
                    "sqrt_abar_t",
                    "sqrt_one_minus_abar_t",
                    "mean_x0",
                    "mean_rest",
                    "std",
                    "variance",
                    "log_beta",
                    "log_floor",
                ):
                    a, b = getattr(tr, name), getattr(one, name)
                    assert (a is None) == (b is None), name
                    if a is not None:
                        assert a.dtype == dtype and a.dim() == 0 and torch.equal(a, b), name
                assert (tr.final, tr.noisy, tr.abar_t) == (one.final, one.noisy, abar(t))


def test_ddpm_final_step_adds_no_noise():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    noise = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    for kind in ("fixed_small", "fixed_large", "learned_range"):
        values = model_v(x, 0)
        tr = _ddpm(abar(0), 1.0, kind, abar(20))
        assert tr.final and not tr.noisy
        out = steps.step(x, model_eps(x, 0), tr, noise=noise, variance_values=values)
        assert torch.equal(out.x_prev, out.mean) and float(out.std.abs().max()) == 0.0
        assert (
            (out.variance > 0).all() if kind != "fixed_small" else float(out.variance.max()) == 0.0
        )
        none = steps.step(x, model_eps(x, 0), tr, noise=None, variance_values=values)
        assert torch.equal(none.x_prev, out.x_prev)
    # at t = 0 the posterior mean is the (clipped) x0 itself
    assert torch.allclose(out.mean, out.x0, atol=1e-12)
    with pytest.raises(ValueError, match="noise"):
        steps.step(x, model_eps(x, 500), _ddpm(abar(500), abar(480), "fixed_small"), noise=None)


def test_loop_pieces_compose_to_the_step():
    """The loop calls predict_x0, eps_from_x0, moments and add_noise with hooks in between;
    without hooks that is exactly ``step``."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(SHAPE, generator=gen)
    noise = torch.randn(SHAPE, generator=gen)
    eps = model_eps(x, 600)
    v = model_v(x, 600)
    learned = steps.transition(abar(600), abar(560), kind="ddpm", variance="learned_range")
    step = steps.step(x, eps, learned, noise=noise, variance_values=v)
    mean, std, variance = steps.moments(learned, x, step.x0, eps, v)
    assert torch.allclose(mean, step.mean) and torch.allclose(variance, step.variance)
    assert (
        torch.allclose(step.std, variance.sqrt()) and mean.dtype == variance.dtype == torch.float32
    )
    ddim_tr = steps.transition(abar(600), abar(560), eta=0.5)
    ddim = steps.step(x, eps, ddim_tr, noise=noise)
    x0 = steps.predict_x0(x, eps, ddim_tr)
    direction = steps.eps_from_x0(x, x0, ddim_tr)
    mean, std, _ = steps.moments(ddim_tr, x, x0, direction)
    assert torch.equal(mean, ddim.mean) and torch.equal(std, ddim.std)
    assert torch.equal(ddim.x_prev, steps.add_noise(mean, std, noise, ddim_tr))
    assert torch.allclose(ddim.x_prev, ddim.mean + ddim.std * noise)


# --- contract: x0 helpers, batching, dtype, autograd, errors ------------------------------


def test_predict_x0_and_eps_from_x0_are_inverse():
    gen = torch.Generator().manual_seed(10)
    x0 = torch.rand(SHAPE, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    a = abar(700)
    tr = tr64(a)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    assert torch.allclose(steps.predict_x0(x_t, eps, tr, clip=False), x0, atol=1e-10)
    assert torch.allclose(steps.eps_from_x0(x_t, x0, tr), eps, atol=1e-10)
    raw = steps.predict_x0(x_t, -3 * eps, tr, clip=False)
    assert raw.abs().max() > 1.5
    assert steps.predict_x0(x_t, -3 * eps, tr).abs().max() == 1.0  # default clips to [-1, 1]
    assert steps.predict_x0(x_t, -3 * eps, tr, clip=1.5).abs().max() == 1.5
    with pytest.raises(ValueError):
        steps.predict_x0(x_t, eps, tr, clip=-1.0)
    # from the data (abar = 1, inversion's first step) x0 is the input itself
    assert torch.equal(steps.predict_x0(x0, eps, tr64(1.0, a), clip=False), x0)


def test_rows_of_a_batch_equal_single_rows():
    """Elementwise arithmetic with 0-dim coefficients: each row is bit for bit its single step."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 3, 4, 4, generator=gen)
    noise = torch.randn(3, 3, 4, 4, generator=gen)
    v = torch.rand(3, 3, 4, 4, generator=gen) * 2 - 1
    eps = model_eps(x, 400)
    trs = [
        steps.transition(abar(400), abar(300), kind="ddpm", variance="learned_range"),
        steps.transition(abar(400), abar(300), eta=0.7),
        steps.transition(abar(300), abar(400)),  # upwards: inversion
    ]
    for tr in trs:
        batch = steps.step(x, eps, tr, noise=noise, variance_values=v)
        for i in range(3):
            row = slice(i, i + 1)
            one = steps.step(x[row], eps[row], tr, noise=noise[row], variance_values=v[row])
            assert torch.equal(batch.x_prev[row], one.x_prev)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_preserved(dtype):
    x = torch.randn(SHAPE).to(dtype)
    eps = model_eps(x.double(), 300).to(dtype)
    noise = torch.randn(SHAPE).to(dtype)

    def tr(a_t, a_p, dt=dtype, **kw):
        return steps.transition(abar(a_t), abar(a_p), dtype=dt, **kw)

    ddim = steps.step(x, eps, tr(300, 280, eta=0.5), noise=noise)
    large = tr(300, 280, kind="ddpm", variance="fixed_large")
    ddpm = steps.step(x, eps, large, noise=noise)
    inv = steps.step(x, eps, tr(280, 300), clip=False, rederive=False).x_prev
    for tensor in (ddim.x_prev, ddim.x0, ddim.std, ddpm.x_prev, ddpm.std, ddpm.variance, inv):
        assert tensor.dtype == dtype
    ref64 = tr(300, 280, torch.float64, eta=0.5)
    ref = steps.step(x.double(), eps.double(), ref64, noise=noise.double())
    assert (ddim.x_prev.double() - ref.x_prev).abs().max() < (0.05 if dtype.itemsize == 2 else 1e-6)


def test_ddim_step_is_differentiable_in_x_t():
    """SHRED backpropagates through the DDIM combinations to x_T."""
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def chain(x_t: torch.Tensor) -> torch.Tensor:
        for t, t_prev in [(999, 899), (899, 799)]:
            x_t = steps.step(x_t, model_eps(x_t, t), tr64(abar(t), abar(t_prev)), clip=False).x_prev
        return x_t

    assert torch.autograd.gradcheck(chain, (x,))


def test_errors_are_clear():
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="noise"):
        steps.step(x, x, steps.transition(abar(500), abar(400), eta=1.0))
    # std 0: no noise needed
    assert torch.equal(steps.step(x, x, steps.transition(abar(500), 1.0, eta=1.0)).x_prev, x)
    with pytest.raises(ValueError, match="unknown step kind"):
        steps.transition(abar(500), abar(400), kind="euler")
    with pytest.raises(ValueError, match="unknown DDPM variance"):
        steps.transition(abar(500), abar(400), kind="ddpm", variance="learned")
    learned = steps.transition(abar(500), abar(400), kind="ddpm", variance="learned_range")
    with pytest.raises(ValueError, match="variance_values"):
        steps.step(x, x, learned, noise=x)
    with pytest.raises(ValueError, match="targets"):
        steps.transitions_between([abar(500)], [abar(400), abar(300)])
