"""Dynamic thresholding and confidence clipping: the functions, the stages in the loop, and the
``transform_x0`` hook they rely on (called after the model, before guidance and the step)."""

from __future__ import annotations

import math

import pytest
import torch
import toys

from guidestack.engine import steps
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import GuidanceOptions, Stage
from guidestack.plugins.stages.projections import (
    X0Rule,
    confidence_bound,
    confidence_clip,
    dynamic_threshold,
)
from guidestack.testing import registry_with, run_trajectory

# --- the functions -----------------------------------------------------------------------------


def test_dynamic_threshold_per_sample():
    base = torch.linspace(-1, 1, 100).view(1, 1, 10, 10)
    x = torch.cat([1.2 * base, 0.5 * base, 3.0 * base])  # quantile 0.98 of |x|: 1.176, 0.49, 2.94
    out = dynamic_threshold(x, quantile=0.98, max_value=1.3)
    s0 = float(torch.quantile((1.2 * base).abs().flatten(), 0.98))
    assert s0 == pytest.approx(1.176, abs=1e-3)
    torch.testing.assert_close(out[0], (1.2 * base[0]).clamp(-s0, s0) / s0)
    torch.testing.assert_close(out[1], 0.5 * base[0])  # s clamped to 1: inside [-1, 1] unchanged
    torch.testing.assert_close(out[2], (3.0 * base[0]).clamp(-1.3, 1.3) / 1.3)  # s capped at max
    assert out.abs().max() <= 1.0
    for i in range(3):  # a batch equals single samples
        assert torch.equal(dynamic_threshold(x[i : i + 1], 0.98, 1.3)[0], out[i])


def test_x0_rule_modes():
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0]).view(1, 1, 2, 2)
    assert torch.equal(X0Rule().apply(x), x)
    assert torch.equal(X0Rule(mode="clip").apply(x), x.clamp(-1, 1))
    assert torch.equal(X0Rule(mode="dynamic", quantile=1.0, max=2.0).apply(x), x / 2)


def test_confidence_bound_and_clip():
    assert confidence_bound(1.0, 1.7) == 1.0
    assert confidence_bound(0.64, 1.7) == pytest.approx(0.8 + 1.7 * 0.6)
    assert confidence_bound(0.0, 2.0) == 2.0
    x = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    assert torch.equal(confidence_clip(x, 0.64, 1.7), x.clamp(-1.82, 1.82))


# --- in the loop -------------------------------------------------------------------------------

SEEN: dict[str, list[torch.Tensor]] = {}


class ProbeOptions(GuidanceOptions):
    pass


class Probe(Stage):
    """Records x_t as update_latent leaves it, x0 as guidance sees it, and checks that the DDIM
    step was built on the transformed x0."""

    name = "probe"
    Options = ProbeOptions

    @hookimpl
    def update_latent(self, ctx, state):
        SEEN["x_t"].append(state.x_t.clone())

    @hookimpl
    def guidance_loss(self, ctx, state):
        SEEN["x0"].append(state.x0.detach().clone())
        return state.x0.sum(dim=(1, 2, 3)) * 0.0

    @hookimpl
    def project(self, ctx, state):
        eps = steps.eps_from_x0(state.x_t, state.x0, steps.transition(ctx.abar(state.t)))
        expect = (
            math.sqrt(ctx.abar(state.t_prev)) * state.x0
            + math.sqrt(1 - ctx.abar(state.t_prev)) * eps
        )
        SEEN["step_error"].append(float((state.x_prev - expect).abs().max()))
        SEEN["x_prev"].append(state.x_prev.clone())


@pytest.fixture(scope="module")
def reg():
    return registry_with(Probe)


@pytest.fixture(scope="module")
def bright_prior():
    """x0 predictions far outside [-1, 1] (mean 2.5), so thresholds have work to do."""
    prior = toys.DiagonalGaussianPrior(size=8)
    prior.mean.fill_(2.5)
    return prior


def run(reg, prior, stages, **sampler):
    for key in ("x_t", "x0", "step_error", "x_prev"):
        SEEN[key] = []
    recipe = {
        "sampler": {"kind": "ddim", "steps": 10, "eta": 0.0, "clip_x0": False, **sampler},
        "guidance": {"rule": "x0", "scale": 1.0},  # the probe's loss is 0: x0 is left as is
        "stage": stages,
    }
    return run_trajectory(recipe, prior, torch.zeros(2, 3, 8, 8), registry=reg, seeds=[1, 2])


def test_transform_x0_runs_before_guidance_and_the_step(reg, bright_prior):
    plain = run(reg, bright_prior, [{"use": "probe"}])
    assert max(float(x.abs().max()) for x in SEEN["x0"]) > 2.0
    thresholded = run(
        reg,
        bright_prior,
        [{"use": "dynamic-thresholding", "quantile": 0.98, "max": 1.3}, {"use": "probe"}],
    )
    assert len(SEEN["x0"]) == 10
    for x0 in SEEN["x0"]:  # guidance saw the thresholded x0 ...
        assert float(x0.abs().max()) <= 1.0 + 1e-6
    assert max(SEEN["step_error"]) < 1e-5  # ... and the DDIM step used it
    assert thresholded.image.abs().max() <= 1.0 and not torch.equal(thresholded.image, plain.image)


def test_dynamic_thresholding_window_and_clip_note(reg, bright_prior):
    ts = [s.t for s in run(reg, bright_prior, [{"use": "probe"}]).steps]
    run(
        reg,
        bright_prior,
        [{"use": "dynamic-thresholding", "window": [500, 1000]}, {"use": "probe"}],
    )
    inside = [float(x0.abs().max()) for t, x0 in zip(ts, SEEN["x0"], strict=True) if t > 500]
    outside = [float(x0.abs().max()) for t, x0 in zip(ts, SEEN["x0"], strict=True) if t <= 500]
    assert max(inside) <= 1.0 + 1e-6 and max(outside) > 1.5
    traj = run(reg, bright_prior, [{"use": "dynamic-thresholding"}], clip_x0=True)
    assert any("clip_x0" in note for note in traj.ctx.report["notes"])


def test_confidence_clipping_of_x_t(reg, bright_prior):
    traj = run(reg, bright_prior, [{"use": "confidence-clipping", "eta": 0.5}, {"use": "probe"}])
    hit = 0
    for t, x_t in zip(traj.ts, SEEN["x_t"], strict=True):
        bound = confidence_bound(traj.ctx.abar(t), 0.5)
        assert float(x_t.abs().max()) <= bound + 1e-6
        hit += int(float(x_t.abs().max()) >= bound - 1e-6)
    assert hit >= 5  # the bright prior pushes latents against the bound


def test_confidence_clipping_of_x_prev(reg, bright_prior):
    traj = run(
        reg,
        bright_prior,
        [{"use": "probe"}, {"use": "confidence-clipping", "eta": 0.5, "apply_to": "x_prev"}],
    )
    unclipped = SEEN["x_prev"]  # the probe runs first: what the step produced
    excess = []
    for step, raw in zip(traj.steps, unclipped, strict=True):
        bound = confidence_bound(traj.ctx.abar(step.t_prev), 0.5)
        torch.testing.assert_close(step.x_prev, raw.clamp(-bound, bound))
        excess.append(float(raw.abs().max()) - bound)
    assert max(excess) > 0.05 and float(traj.image.abs().max()) <= 1.0
