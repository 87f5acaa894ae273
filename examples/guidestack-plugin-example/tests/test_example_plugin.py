"""Tests of the example plugin, written with the fixtures of ``guidestack.testing``
(gs_registry, gs_prior, gs_faces, gs_run, gs_recorder), which pytest loads by itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from guidestack.cli.main import main
from guidestack.engine.errors import RecipeError
from guidestack.engine.recipe import recipe_index
from guidestack.io.images import read_image
from guidestack.testing import make_recipe, registry_with
from PIL import Image

from guidestack_example import plugin
from guidestack_example.command import mirror_score
from guidestack_example.ilvr import low_pass
from guidestack_example.symmetry import asymmetry

DDPM = {"kind": "ddpm", "steps": 12}


def test_installed_plugin_is_discovered(gs_registry):
    assert gs_registry.get("stage", "mirror-symmetry").plugin == "example"
    assert gs_registry.get("stage", "ilvr").hooks == ("project",)
    assert recipe_index(gs_registry)["symmetric-faces"][0] == "example"


def test_installed_plugin_adds_its_command(gs_registry):
    assert gs_registry.get("command", "mirror-score").plugin == "example"


def write_png(path, face: torch.Tensor) -> str:
    """Save a ``[3, H, W]`` image in [-1, 1] as an 8-bit PNG."""
    pixels = ((face + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)
    return str(path)


def test_mirror_score_command(tmp_path, capsys, gs_faces):
    face = write_png(tmp_path / "face.png", gs_faces[0])
    half = gs_faces[0][..., :8]
    mirrored = write_png(tmp_path / "mirrored.png", torch.cat([half, half.flip(-1)], dim=-1))
    halves = torch.full_like(gs_faces[0], -0.5)
    halves[..., 8:] = 0.5
    two_tone = write_png(tmp_path / "two-tone.png", halves)

    assert main(["mirror-score", face, mirrored, two_tone, "--json"]) == 0
    scores = [row["score"] for row in json.loads(capsys.readouterr().out)]
    expected = mirror_score(read_image(face).tensor[None])
    assert scores[0] == pytest.approx(float(expected[0]), rel=1e-6) and scores[0] > 1e-3
    assert scores[1] == 0.0  # an exact mirror image
    # a constant left-right difference d scores d^2, whatever the image size
    values = read_image(two_tone).tensor
    assert scores[2] == pytest.approx(float(values[0, 0, -1] - values[0, 0, 0]) ** 2, rel=1e-6)

    assert main(["mirror-score", face, "--sigma", "2"]) == 0  # blurring can only lower it
    assert float(capsys.readouterr().out.split()[-1]) < scores[0]


def test_mirror_score_refuses_bad_options(tmp_path, capsys, gs_faces):
    face = write_png(tmp_path / "face.png", gs_faces[0])
    assert main(["mirror-score", face, "--extent", "0"]) == 2
    assert "--extent" in capsys.readouterr().err


def test_plugin_module_registers_without_installation():
    registry = registry_with(plugin)  # built-ins + this module, no entry points
    assert registry.stage("mirror-symmetry") is not None
    assert "symmetric-faces" in recipe_index(registry)


def test_asymmetry_vanishes_exactly_on_mirror_images(gs_faces):
    symmetric = 0.5 * (gs_faces + gs_faces.flip(-1))
    for sigma in (0.0, 1.5):
        assert torch.all(asymmetry(symmetric, sigma) < 1e-8)
        assert torch.all(asymmetry(gs_faces, sigma) > 1e-3)
    # blurring first ignores fine detail: the loss can only shrink
    assert torch.all(asymmetry(gs_faces, 2.0) < asymmetry(gs_faces, 0.0))


def test_symmetry_guidance_makes_faces_more_symmetric(gs_run, gs_faces):
    plain = gs_run({"sampler": DDPM, "stage": [{"use": "ilvr", "window": [300, 1000]}]})
    guided = gs_run(
        {
            "sampler": DDPM,
            "guidance": {"rule": "x0", "scale": 0.25},
            "stage": [{"use": "ilvr", "window": [300, 1000]}, {"use": "mirror-symmetry"}],
        }
    )
    before = asymmetry(plain.image, 0.0, 0.8)
    after = asymmetry(guided.image, 0.0, 0.8)
    assert torch.all(after < 0.5 * before), (before, after)
    assert guided.loss("mirror-symmetry").shape == (len(guided.steps), gs_faces.shape[0])


def test_ilvr_gives_the_output_the_input_low_pass(gs_run, gs_faces):
    free = gs_run({"sampler": DDPM, "stage": []})
    kept = gs_run({"sampler": DDPM, "stage": [{"use": "ilvr", "factor": 4}]})
    target = low_pass(gs_faces, 4)
    # the projection acts on the latent; compare the last latent, before the engine clamps the
    # image to [-1, 1] (clamping the prior's noisy samples moves their low-pass band a little)
    err_kept = (low_pass(kept.steps[-1].x_prev, 4) - target).abs().max()
    err_free = (low_pass(free.steps[-1].x_prev, 4) - target).abs().max()
    assert err_kept < 0.05 < err_free, (err_kept, err_free)


def test_hooks_run_every_step_in_recipe_order(gs_run, gs_recorder):
    recipe = {
        "sampler": DDPM,
        "guidance": {"rule": "dynamic", "scale": 0.5},
        "stage": [{"use": "mirror-symmetry"}, {"use": "ilvr", "window": [500, 1000]}],
    }
    run = gs_run(recipe, recorder=gs_recorder)
    assert gs_recorder.count("guidance_loss", "mirror-symmetry") == len(run.steps) == 12
    projected = [c.t for c in gs_recorder.calls if c.hook == "project"]
    assert projected == run.ts  # called every step; it checks its own window
    first_step = [c.hook for c in gs_recorder.calls if c.index == 0]
    assert first_step == ["guidance_loss", "project"]


def test_batch_equals_single_runs(gs_run, gs_faces):
    """In deterministic mode a batch is bit-identical to single runs (default: up to rounding)."""
    recipe = "symmetric-faces"
    overrides = ["sampler.steps=8", "sampler.deterministic=true"]
    together = gs_run(recipe, gs_faces, seeds=[3, 4], overrides=overrides)
    for i, seed in enumerate((3, 4)):
        alone = gs_run(recipe, gs_faces[i : i + 1], seeds=[seed], overrides=overrides)
        assert torch.equal(alone.image[0], together.image[i])


def test_packaged_recipe_uses_per_prior_defaults(gs_registry, gs_prior):
    generic = make_recipe("symmetric-faces", gs_registry)
    recipe = make_recipe("symmetric-faces", gs_registry, prior=gs_prior)
    assert [s.use for s in recipe.stages] == ["ilvr", "mirror-symmetry"]
    assert generic.stages[0].factor == 8
    assert recipe.stages[0].factor == 4  # [per_prior.gaussian] applies to every Gaussian prior


@pytest.mark.parametrize(
    "stage,path",
    [
        ({"use": "ilvr", "factor": 1}, "stage[0].factor"),
        ({"use": "ilvr", "window": [800, 100]}, "stage[0]"),
        ({"use": "mirror-symmetry", "extent": 0.0}, "stage[0].extent"),
    ],
)
def test_bad_options_are_refused_with_their_path(gs_registry, stage, path):
    with pytest.raises(RecipeError, match=path.replace("[", r"\[").replace("]", r"\]")):
        make_recipe({"sampler": DDPM, "stage": [stage]}, gs_registry)
