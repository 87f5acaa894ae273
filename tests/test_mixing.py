"""Composite recipes that mix plugins of different papers, and the one mix that is forbidden."""

from __future__ import annotations

import json

import kornia
import pytest
import torch
from conftest import EXAMPLES, REPO

from guidestack.cli.main import main
from guidestack.engine.context import Observation
from guidestack.engine.errors import RecipeError
from guidestack.engine.recipe import load_recipe, validate
from guidestack.engine.run import run_recipe
from guidestack.io.images import read_image, to_square
from guidestack.plugins.stages import difface, pgdiff

MIXES = ("difface-colorize", "old-photo-difface", "restore-identity-perceptual")
FAMILY = {cls.name: "difface" for cls in difface.STAGES} | {
    cls.name: "pgdiff" for cls in pgdiff.STAGES
}


@pytest.fixture(scope="module")
def faces():
    from guidestack.plugins.priors.gaussian import load_shipped_prior

    return load_shipped_prior()


def example(name: str, kind: str = "image") -> torch.Tensor:
    return to_square(read_image(EXAMPLES / name, kind=kind).tensor, 64, kind=kind)[0][None]


def gray(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True)


def rms(x: torch.Tensor, where: torch.Tensor | None = None) -> float:
    if where is None:
        return x.pow(2).mean().sqrt().item()
    where = where.expand_as(x)
    return x[where].pow(2).mean().sqrt().item()


@pytest.mark.parametrize("name", MIXES)
def test_mixing_recipes_combine_papers_and_say_why(registry, name):
    recipe = load_recipe(name, registry)
    families = {FAMILY[s.use] for s in recipe.stages}
    assert families == {"difface", "pgdiff"}, name
    docs = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    section = docs.split(f"### `{name}`", 1)
    assert len(section) == 2, f"docs/recipes.md has no section for {name}"
    assert "Why the mix helps" in " ".join(section[1].split("###", 1)[0].split()), name


def test_difface_colorize_keeps_lightness_exactly_and_adds_colour(registry, faces):
    y = example("astronaut_gray.png")
    recipe = load_recipe("difface-colorize", registry, prior_name=faces.name, prior_kind=faces.kind)
    result, ctx = run_recipe(recipe, faces, Observation(y), [0], registry)
    out = result.image
    assert ctx.report["grid"][0] == 400 and ctx.model_calls == len(ctx.report["grid"]) == 41
    assert rms(gray(out) - gray(y)) < 0.03
    assert out.std(dim=1).mean() > 0.05  # not gray any more
    # without the PGDiff properties the DifFace start alone drifts far from the photo's lightness
    alone = validate({**recipe.raw, "stage": recipe.raw["stage"][:1]}, registry, "<difface only>")
    drifted, _ = run_recipe(alone, faces, Observation(y), [0], registry)
    assert rms(gray(drifted.image) - gray(y)) > 5 * rms(gray(out) - gray(y))


def test_old_photo_difface_fills_the_damage_and_keeps_the_rest(registry, faces):
    clean = example("grace_hopper.png")
    mask = example("grace_hopper_mask.png", "mask")
    g = torch.Generator().manual_seed(0)
    old = kornia.filters.gaussian_blur2d(gray(clean).expand_as(clean), (5, 5), (1.0, 1.0))
    old = (old + 0.06 * torch.randn(old.shape, generator=g)).clamp(-1, 1)
    old = torch.where(mask > 0.5, torch.ones_like(old), old)  # a white, damaged region
    recipe = load_recipe(
        "old-photo-difface", registry, prior_name=faces.name, prior_kind=faces.kind
    )
    result, ctx = run_recipe(recipe, faces, Observation(old, mask=mask), [0], registry)
    out = result.image
    known, hole = mask < 0.5, mask > 0.5
    assert ctx.report["grid"][0] == 400 and ctx.model_calls == 41
    smoothed = kornia.filters.gaussian_blur2d(old, (9, 9), (1.0, 1.0), border_type="reflect")
    assert rms(gray(out) - gray(smoothed), known) < 0.03  # the restored lightness, exactly
    assert rms(gray(out) - gray(clean), hole) < 0.5 * rms(gray(old) - gray(clean), hole)
    assert out.std(dim=1).mean() > 0.05


def test_restore_identity_perceptual_needs_a_reference_before_anything_runs(tmp_path, capsys):
    code = main(
        [
            "run",
            "restore-identity-perceptual",
            str(EXAMPLES / "astronaut_degraded.png"),
            "-o",
            str(tmp_path / "out"),
            "--prior",
            "gaussian-faces-64",
            "--quiet",
        ]
    )
    assert code == 2
    assert "reference" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_two_initial_latent_stages_are_rejected_before_running(registry, tmp_path, capsys):
    """DifFace's start and ODEdit's inversion both choose x_N: the recipe is refused up front."""
    others = [
        n
        for n in registry.names("stage")
        if n != "difface" and "initial_latent" in registry.get("stage", n).hooks
    ]
    assert others, "no other initial-latent stage registered"
    for other in others:
        raw = {"description": "t", "stage": [{"use": "difface"}, {"use": other}]}
        with pytest.raises(RecipeError) as info:
            validate(raw, registry, "<t>")
        assert "'difface'" in str(info.value) and f"'{other}'" in str(info.value), other
    path = tmp_path / "both.toml"
    path.write_text(
        f'description = "t"\n[[stage]]\nuse = "difface"\n[[stage]]\nuse = "{others[0]}"\n'
    )
    code = main(
        [
            "run",
            str(path),
            str(EXAMPLES / "astronaut_degraded.png"),
            "-o",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "difface" in err and others[0] in err and "initial_latent" in err
    assert not (tmp_path / "out").exists()


def test_mixing_recipes_report_one_model_call_per_visited_step(tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "difface-colorize",
            str(EXAMPLES / "grace_hopper_gray.png"),
            "-o",
            str(out),
            "--prior",
            "gaussian-faces-64",
            "--quiet",
            "--set",
            "stage.difface.start=200",
        ]
    )
    assert code == 0
    item = json.loads((out / "run.json").read_text())["inputs"][0]
    assert item["start_t"] == 200 and item["model_calls"] == 21  # 200, 190, ..., 0


@pytest.mark.parametrize("name", ["difface-inpaint", "old-photo-difface"])
def test_a_batch_equals_single_runs_bitwise(registry, faces, name):
    y = torch.cat([example("astronaut_masked.png"), example("grace_hopper_masked.png")])
    mask = torch.cat(
        [example("astronaut_mask.png", "mask"), example("grace_hopper_mask.png", "mask")]
    )
    recipe = load_recipe(
        name, registry, ["sampler.deterministic=true"], prior_name=faces.name, prior_kind=faces.kind
    )
    obs = Observation(y, mask=mask)
    both, _ = run_recipe(recipe, faces, obs, [3, 4], registry)
    for i, seed in enumerate([3, 4]):
        alone, _ = run_recipe(recipe, faces, obs.select([i]), [seed], registry)
        assert torch.equal(alone.image[0], both.image[i]), i
