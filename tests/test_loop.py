"""The sampler loop: hook order, batch invariance, guidance rules, errors naming the stage."""

from __future__ import annotations

import pytest
import torch
import toys

from guidestack.engine.context import Observation
from guidestack.engine.errors import NonFiniteError, RecipeError, StageError
from guidestack.engine.recipe import validate
from guidestack.engine.registry import load_registry
from guidestack.engine.run import run_recipe


@pytest.fixture(scope="module")
def reg():
    r = load_registry(blocked=set(), entry_points=False)
    for name in ("rec-a", "rec-b", "rec-c"):
        r.add_stage(toys.make_recorder(name))
    r.add_stage(toys.PullToZero)
    r.add_stage(toys.StartHere)
    r.add_stage(toys.StartThere)
    return r


@pytest.fixture(scope="module")
def prior():
    return toys.DiagonalGaussianPrior(size=8)


def recipe(reg, stages, **sections):
    raw = {"description": "test", "stage": stages, **sections}
    return validate(raw, reg, "<test>")


def obs(n, size=8):
    g = torch.Generator().manual_seed(1)
    return Observation(image=torch.rand(n, 3, size, size, generator=g) * 2 - 1)


def test_stages_run_in_recipe_order(reg, prior):
    toys.CALLS.clear()
    r = recipe(
        reg,
        [{"use": "rec-b"}, {"use": "rec-c"}, {"use": "rec-a"}],
        sampler={"kind": "ddpm", "steps": 2},
    )
    run_recipe(r, prior, obs(1), [0], reg)
    per_hook: dict[str, list[str]] = {}
    for sid, hook in toys.CALLS:
        per_hook.setdefault(hook, []).append(sid)
    for hook, ids in per_hook.items():
        n = len(ids) // 3
        assert ids == ["rec-b", "rec-c", "rec-a"] * n, hook
    # within a step: update_latent before guidance_loss before project
    first_step = [h for _, h in toys.CALLS[:9]]
    assert first_step == ["update_latent"] * 3 + ["guidance_loss"] * 3 + ["project"] * 3


@pytest.mark.parametrize(
    "sampler,guidance",
    [
        ({"kind": "ddpm", "steps": 20}, {"rule": "mean_shift", "scale": 0.5}),
        ({"kind": "ddim", "steps": 20, "eta": 0.7}, {"rule": "dynamic_channel", "scale": 0.05}),
        (
            {"kind": "ddim", "steps": 20, "eta": 0.0},
            {"rule": "dynamic", "scale": 0.05, "repeats": 2},
        ),
    ],
)
def test_batch_equals_single_runs_bitwise(reg, prior, sampler, guidance):
    sampler = {**sampler, "deterministic": True}
    r = recipe(reg, [{"use": "pull-to-zero"}], sampler=sampler, guidance=guidance)
    batch = obs(3)
    seeds = [11, 22, 33]
    together, _ = run_recipe(r, prior, batch, seeds, reg)
    for i in range(3):
        alone, _ = run_recipe(r, prior, batch.select([i]), [seeds[i]], reg)
        assert torch.equal(alone.image[0], together.image[i]), i


def test_model_calls_equal_steps_plus_repeats(reg, prior):
    r = recipe(
        reg,
        [{"use": "pull-to-zero"}],
        sampler={"kind": "ddpm", "steps": 50},
        guidance={"repeats": 3, "repeat_window": [700, 1000]},
    )
    _, ctx = run_recipe(r, prior, obs(1), [0], reg)
    in_window = sum(1 for t in ctx.report["grid"] if 700 < t <= 1000)
    assert ctx.model_calls == 50 + 2 * in_window
    assert in_window > 0


def test_respaced_repeat_window_uses_original_units(reg, prior):
    """With 10 respaced steps the window 700 < t <= 1000 still holds three grid points."""
    r = recipe(
        reg,
        [{"use": "pull-to-zero"}],
        sampler={"kind": "ddpm", "steps": 10},
        guidance={"repeats": 2},
    )
    _, ctx = run_recipe(r, prior, obs(1), [0], reg)
    assert ctx.model_calls == 10 + sum(1 for t in ctx.report["grid"] if t > 700) >= 12


def test_guidance_pulls_towards_lower_loss(reg, prior):
    base = recipe(reg, [], sampler={"kind": "ddpm", "steps": 20})
    guided = recipe(
        reg,
        [{"use": "pull-to-zero"}],
        sampler={"kind": "ddpm", "steps": 20},
        guidance={"scale": 2.0},
    )
    a, _ = run_recipe(base, prior, obs(2), [0, 1], reg)
    b, _ = run_recipe(guided, prior, obs(2), [0, 1], reg)
    assert (b.image.pow(2).flatten(1).sum(1) < a.image.pow(2).flatten(1).sum(1)).all()


def test_stage_exception_names_stage_and_step(reg, prior):
    r = recipe(
        reg,
        [{"use": "pull-to-zero", "id": "mine", "fail_at": 3, "value": 1.0}],
        sampler={"kind": "ddpm", "steps": 10},
    )
    with pytest.raises(StageError) as info:
        run_recipe(r, prior, obs(1), [0], reg)
    msg = str(info.value)
    assert "'mine'" in msg and "step 3" in msg and "guidance_loss" in msg and "boom" in msg


def test_nan_loss_is_refused(reg, prior):
    r = recipe(reg, [{"use": "pull-to-zero", "fail_at": 2}], sampler={"kind": "ddpm", "steps": 10})
    with pytest.raises(NonFiniteError, match="not finite"):
        run_recipe(r, prior, obs(1), [0], reg)


def test_two_initial_latent_stages_rejected_before_running(reg):
    with pytest.raises(RecipeError) as info:
        recipe(reg, [{"use": "start-here"}, {"use": "start-there"}])
    msg = str(info.value)
    assert "start-here" in msg and "start-there" in msg and "initial_latent" in msg


def test_initial_latent_sets_start_and_first_call(reg, prior):
    r = recipe(reg, [{"use": "start-here"}], sampler={"kind": "ddim", "steps": 10})
    _, ctx = run_recipe(r, prior, obs(1), [0], reg)
    assert ctx.report["grid"][0] == 500
    assert ctx.model_calls == len(ctx.report["grid"])


def test_dynamic_rule_matches_formula():
    from guidestack.engine.guidance import dynamic_update

    x_t = torch.randn(2, 3, 4, 4)
    xp = torch.randn(2, 3, 4, 4)
    g = torch.randn(2, 3, 4, 4)
    out = dynamic_update(x_t, xp, g, 0.3, per_channel=False)
    for i in range(2):
        expect = xp[i] - 0.3 * (x_t[i] - xp[i]).norm() / g[i].norm() * g[i]
        assert torch.allclose(out[i], expect, atol=1e-6)
    out_c = dynamic_update(x_t, xp, g, 0.3, per_channel=True)
    for i in range(2):
        for c in range(3):
            expect = xp[i, c] - 0.3 * (x_t[i, c] - xp[i, c]).norm() / g[i, c].norm() * g[i, c]
            assert torch.allclose(out_c[i, c], expect, atol=1e-6)


def test_hooks_without_implementers_cost_one_lookup():
    """Calling a hook no stage implements returns an empty tuple (no generator, no kwargs
    filtering); implemented hooks still run in recipe order and name the failing stage."""
    from guidestack.engine.stageset import StageSet

    recorder = toys.make_recorder("rec-solo")
    stages = StageSet([toys.PullToZero(toys.PullToZero.Options(use="pull-to-zero"))])
    assert stages.call("project", ctx=None, state=None, step=0, t=999) == ()
    assert stages.first("initial_latent", ctx=None) is None
    assert not stages.has("update_latent") and stages.has("guidance_loss")
    toys.CALLS.clear()
    both = StageSet(
        [recorder(recorder.Options(use="rec-solo", id=name)) for name in ("first", "second")]
    )
    assert [s.id for s, _ in both.call("project", ctx=None, state=None)] == ["first", "second"]
    assert toys.CALLS == [("first", "project"), ("second", "project")]
