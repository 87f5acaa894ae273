"""guidestack.testing: the pytest plugin plugin authors get (fixtures loaded through the
``pytest11`` entry point, exact tiny prior, trajectories, hook recording)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import toys

from guidestack.engine.errors import RecipeError
from guidestack.engine.recipe import validate
from guidestack.engine.run import run_recipe
from guidestack.plugins.priors.gaussian import load_shipped_prior
from guidestack.testing import (
    HookRecorder,
    face_batch,
    make_observation,
    make_recipe,
    registry_with,
    run_trajectory,
    tiny_prior,
)


def test_plugin_is_loaded_by_pytest_through_its_entry_point(request):
    plugin = request.config.pluginmanager.get_plugin("guidestack")
    assert plugin is not None and plugin.__name__ == "guidestack.testing"


def test_importing_it_does_not_import_torch():
    code = "import sys, guidestack.testing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def dense_covariance(prior) -> torch.Tensor:
    u = prior.components.double()
    return u @ torch.diag(prior.lam.double()) @ u.T + float(prior.s2) * torch.eye(
        prior.dim, dtype=torch.float64
    )


def test_tiny_prior_is_the_exact_law_of_pooled_shipped_faces():
    """Covariance D C D^T of 4x4-pooled 64x64 faces (dense) equals the tiny prior's."""
    big = load_shipped_prior(dtype=torch.float64)
    small = tiny_prior(16, dtype=torch.float64)
    k = big.num_components
    v = (big.components * big.lam.sqrt()).T.reshape(k, 3, 64, 64)
    dv = F.avg_pool2d(v, 4).reshape(k, -1).T
    expected = dv @ dv.T + float(big.s2) / 16 * torch.eye(3 * 16 * 16, dtype=torch.float64)
    assert torch.allclose(dense_covariance(small), expected, atol=1e-9, rtol=1e-9)
    pooled_mean = F.avg_pool2d(big.mean.view(1, 3, 64, 64), 4).flatten()
    assert torch.allclose(small.mean, pooled_mean, atol=1e-12)


def test_tiny_prior_denoiser_is_the_exact_mmse():
    prior = tiny_prior(8, dtype=torch.float64)
    cov = dense_covariance(prior)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for t in (10, 500, 990):
        abar = float(prior.alphas_cumprod[t])
        a, b = math.sqrt(abar), math.sqrt(1 - abar)
        r = x.flatten(1) - a * prior.mean
        want = (
            b
            * torch.linalg.solve(
                a * a * cov + b * b * torch.eye(prior.dim, dtype=torch.float64), r.T
            ).T
        )
        got = prior(x, torch.tensor([t, t])).eps.flatten(1)
        assert torch.allclose(got, want, atol=1e-9), t


def test_face_batch_rows_depend_only_on_their_seed():
    faces = face_batch(3, seed=5)
    assert faces.shape == (3, 3, 16, 16) and faces.abs().max() <= 1
    assert torch.equal(face_batch(1, seed=6)[0], faces[1])
    assert not torch.equal(faces[0], faces[1])
    # faces, not noise: each correlates with the prior's mean face (noise would give ~0)
    mean = tiny_prior().mean
    for face in faces.flatten(1):
        assert torch.corrcoef(torch.stack([face, mean]))[0, 1] > 0.4


def test_fixtures_provide_prior_faces_and_registry(gs_prior, gs_faces, gs_registry, registry):
    assert gs_prior.image_size == gs_faces.shape[-1] == 16
    assert gs_prior is not tiny_prior()  # a fresh module per test
    assert gs_registry.stage("smooth-semantics") is not None
    assert registry is not gs_registry  # the project's own `registry` fixture is untouched


def test_gs_run_returns_the_trajectory(gs_run, gs_faces):
    run = gs_run({"sampler": {"kind": "ddpm", "steps": 6}, "stage": [{"use": "smooth-semantics"}]})
    assert run.ts == run.ctx.timesteps and len(run.steps) == 6
    assert run.stack("x0").shape == (6, *gs_faces.shape)
    assert run.loss("smooth-semantics").shape == (6, 2)
    assert run.model_calls == 6
    # each step starts where the previous one ended, and the last one ends at the image
    for before, after in zip(run.steps, run.steps[1:], strict=False):
        assert torch.equal(after.x_t, before.x_prev)
    assert torch.equal(run.steps[-1].x_prev.clamp(-1, 1), run.image)
    with pytest.raises(KeyError, match="no-such"):
        run.loss("no-such")


def test_trajectory_matches_a_plain_engine_run(gs_registry, gs_faces):
    recipe = validate(
        {"description": "t", "sampler": {"kind": "ddim", "steps": 5, "eta": 0.5}}, gs_registry, "t"
    )
    plain, _ = run_recipe(recipe, tiny_prior(), make_observation(gs_faces), [7, 8], gs_registry)
    traced = run_trajectory(recipe, tiny_prior(), gs_faces, registry=gs_registry, seeds=[7, 8])
    assert torch.equal(plain.image, traced.image)


@pytest.fixture
def toy_registry():
    registry = registry_with(
        toys.make_recorder("rec-a"), toys.make_recorder("rec-b"), toys.PullToZero
    )
    return registry


def test_recorder_records_every_hook_in_recipe_order(toy_registry, gs_run):
    recorder = HookRecorder()
    recipe = {
        "sampler": {"kind": "ddpm", "steps": 3},
        "stage": [{"use": "rec-b"}, {"use": "pull-to-zero", "id": "pull"}, {"use": "rec-a"}],
    }
    run = gs_run(recipe, registry=toy_registry, recorder=recorder)
    step0 = [(c.stage, c.hook) for c in recorder.calls if c.index == 0]
    assert step0 == [
        ("rec-b", "update_latent"),
        ("rec-a", "update_latent"),
        ("rec-b", "guidance_loss"),
        ("pull", "guidance_loss"),
        ("rec-a", "guidance_loss"),
        ("rec-b", "project"),
        ("rec-a", "project"),
    ]
    assert recorder.hooks("rec-a")[-1] == "finalize"
    assert recorder.count("guidance_loss", "pull") == 3
    assert [c.t for c in recorder.calls if c.hook == "project" and c.stage == "rec-a"] == run.ts


def test_recording_does_not_change_results(toy_registry, gs_run):
    recipe = {
        "sampler": {"kind": "ddpm", "steps": 5},
        "guidance": {"scale": 0.5},
        "stage": [{"use": "pull-to-zero"}],
    }
    a = gs_run(recipe, registry=toy_registry)
    b = gs_run(recipe, registry=toy_registry, recorder=HookRecorder())
    assert torch.equal(a.image, b.image)


def test_registry_with_checks_the_plugin_api_version():
    from guidestack.engine.errors import PluginError

    class FuturePlugin:
        __name__ = "future_plugin"
        hook_api_version = 10_000

        @staticmethod
        def register(registry):  # pragma: no cover - must not be reached
            raise AssertionError("registered despite its hook API version")

    with pytest.raises(PluginError, match="hook API version 10000"):
        registry_with(FuturePlugin())


def test_make_recipe_reports_bad_stage_options(gs_run):
    with pytest.raises(RecipeError, match=r"stage\[0\]\.weight"):
        gs_run({"stage": [{"use": "smooth-semantics", "weight": -1}]})


def test_dict_recipes_get_per_prior_tables_for_the_prior(gs_registry, gs_prior):
    raw = {
        "sampler": {"kind": "ddpm"},
        "stage": [{"use": "smooth-semantics"}],
        "per_prior": {"gaussian": {"stage": {"smooth-semantics": {"weight": 3.0}}}},
    }
    assert make_recipe(raw, gs_registry, prior=gs_prior).stages[0].weight == 3.0
    assert make_recipe(raw, gs_registry).stages[0].weight == 1.0
    assert "per_prior" in raw  # the caller's dict is left alone
