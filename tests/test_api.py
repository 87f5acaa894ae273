"""The public Python API: priors, recipes, inputs, batches, seeds, custom losses and priors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

import guidestack as gs
from guidestack.engine.prior import EpsFunctionPrior, linear_alphas_cumprod
from guidestack.testing import face_batch, tiny_prior

FACE = EXAMPLES / "astronaut_degraded.png"
MASKED, MASK = EXAMPLES / "astronaut_masked.png", EXAMPLES / "astronaut_mask.png"
FAST = {"sampler.steps": 12}


@pytest.fixture(scope="module")
def prior():
    return gs.load_prior("gaussian-faces-64")


def test_public_names_resolve():
    for name in gs.__all__:
        assert getattr(gs, name) is not None, name
    with pytest.raises(AttributeError):
        gs.no_such_name  # noqa: B018


# --- priors --------------------------------------------------------------------------------------


def test_load_prior_by_name_path_and_object(prior):
    from guidestack.plugins.priors.gaussian import shipped_prior_path

    by_path = gs.load_prior(shipped_prior_path("gaussian-faces-64"))
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([10, 500])
    assert torch.equal(by_path(x, t).eps, prior(x, t).eps)
    assert gs.load_prior(prior) is prior
    assert prior.device == torch.device("cpu")


def test_prior_device_is_the_denoisers_not_the_schedules():
    """The schedule stays on the CPU in float64; the run must follow the network."""
    moved = tiny_prior(8).to("meta")
    assert moved.alphas_cumprod.device.type == "cpu"
    assert moved.device.type == "meta"


def test_callable_prior_equals_the_prior_it_calls(prior):
    wrapped = gs.load_prior(
        lambda x, t: prior(x, t).eps, alphas_cumprod=prior.alphas_cumprod, image_size=64
    )
    assert isinstance(wrapped, EpsFunctionPrior)
    recipe = gs.load_recipe("sample", set=FAST)
    a = gs.run(recipe, prior, torch.zeros(3, 64, 64), seed=3)
    b = gs.run(recipe, wrapped, torch.zeros(3, 64, 64), seed=3)
    assert torch.equal(a.image, b.image)


def test_callable_prior_needs_its_schedule_and_size():
    with pytest.raises(gs.UsageError, match="alphas_cumprod"):
        gs.load_prior(lambda x, t: x, image_size=8)
    with pytest.raises(gs.UsageError, match="image_size"):
        gs.load_prior(lambda x, t: x, alphas_cumprod=linear_alphas_cumprod())
    with pytest.raises(ValueError, match="increase"):
        EpsFunctionPrior(lambda x, t: x, torch.linspace(0.1, 0.9, 10), 8)


def test_unet_instance_with_its_scheduler():
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    p = gs.load_prior(unet, scheduler=scheduler)
    assert p.kind == "diffusers" and p.image_size == 8
    assert torch.allclose(p.alphas_cumprod, scheduler.alphas_cumprod.double(), atol=1e-7)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([7])
    with torch.no_grad():
        assert torch.equal(p(x, t).eps, unet(x, t).sample)
    with pytest.raises(gs.PriorUnavailable, match="scheduler"):
        gs.load_prior(unet)


# --- recipes -------------------------------------------------------------------------------------


def test_load_recipe_from_name_path_text_and_dict(tmp_path):
    by_name = gs.load_recipe("inpaint", set={"guidance.scale": 0.3})
    assert by_name.guidance.scale == 0.3
    path = tmp_path / "mine.toml"
    path.write_text('description = "mine"\nextends = "inpaint"\n[guidance]\nscale = 0.2\n')
    assert gs.load_recipe(path).guidance.scale == 0.2
    text = gs.load_recipe('description = "t"\nextends = "inpaint"\n', set=["sampler.steps=7"])
    assert text.sampler.steps == 7 and text.source == "<text>"
    as_dict = gs.load_recipe({"sampler": {"kind": "ddpm"}, "stage": [{"use": "lightness"}]})
    assert [s.use for s in as_dict.stages] == ["lightness"] and as_dict.description


def test_per_prior_tables_apply_when_the_recipe_meets_its_prior(prior):
    """A recipe loaded without a prior is specialised by run() as the CLI does."""
    plain = gs.load_recipe("restore", set=FAST)
    special = gs.load_recipe("restore", set=FAST, prior=prior)
    assert plain.guidance.rule == "mean_shift" and special.guidance.rule == "dynamic"
    assert plain.for_prior(prior, gs.registry()).guidance == special.guidance
    a = gs.run(plain, prior, FACE)
    b = gs.run(special, prior, FACE)
    assert torch.equal(a.image, b.image)
    assert a.report["recipe"]["guidance"]["rule"] == "dynamic"


def test_overrides_win_over_per_prior_tables(prior):
    recipe = gs.load_recipe("restore", set={"guidance.scale": 0.25}).for_prior(prior, gs.registry())
    assert recipe.guidance.scale == 0.25 and recipe.guidance.rule == "dynamic"


# --- inputs, batches, seeds ----------------------------------------------------------------------


def test_every_input_kind_gives_the_same_result(prior):
    recipe = gs.load_recipe("restore", set=FAST)
    picture = Image.open(FACE)
    kinds = [
        FACE,
        str(FACE),
        picture,
        np.asarray(picture),
        gs.read_image(FACE).tensor,
    ]
    images = [gs.run(recipe, prior, k, names=["face"]).image for k in kinds]
    for image in images[1:]:
        assert torch.equal(image, images[0])


def test_file_inputs_get_the_cli_seed(prior):
    out = gs.run(gs.load_recipe("restore", set=FAST), prior, FACE, seed=5)
    assert out.seed == gs.derive_seed(5, FACE.stem) and out.name == FACE.stem


def test_a_list_gives_one_result_per_input_independent_of_batching(prior):
    recipe = gs.load_recipe("restore", set=FAST)
    faces = list(face_batch(3, size=64, seed=4))
    together = gs.run(recipe, prior, faces, seed=2)
    assert [r.name for r in together] == ["input00", "input01", "input02"]
    split = gs.run(recipe, prior, faces, seed=2, batch_size=2)
    alone = gs.run(recipe, prior, faces[2], seed=2, names=["input02"])
    for a, b in zip(together, split, strict=True):
        assert (a.image - b.image).abs().max() < 1e-5
    assert (together[2].image - alone.image).abs().max() < 1e-5
    assert len({r.seed for r in together}) == 3


def test_explicit_seeds_and_batched_tensor(prior):
    recipe = gs.load_recipe("sample", set=FAST)
    batch = torch.zeros(2, 3, 64, 64)
    out = gs.run(recipe, prior, batch, seeds=[11, 11])
    assert [r.seed for r in out] == [11, 11]
    assert torch.equal(out[0].image, out[1].image)
    with pytest.raises(gs.UsageError, match="one seed per image"):
        gs.run(recipe, prior, batch, seeds=[1])


def test_masks_per_input_and_checks(prior):
    recipe = gs.load_recipe("inpaint", set=FAST)
    with pytest.raises(gs.UsageError, match="needs a mask"):
        gs.run(recipe, prior, MASKED)
    out = gs.run(recipe, prior, [MASKED, MASKED], mask=MASK, names=["a", "b"])
    assert out[0].mask.shape == (1, 128, 128)  # at the output size: the input's own
    with pytest.raises(gs.UsageError, match="2 masks for 1 images"):
        gs.run(recipe, prior, MASKED, mask=[MASK, MASK])
    with pytest.raises(gs.InputError, match="mask"):
        gs.run(recipe, prior, MASKED, mask=np.zeros((10, 12), dtype=bool))


def test_bad_inputs_are_input_errors(prior):
    recipe = gs.load_recipe("restore", set=FAST)
    with pytest.raises(gs.InputError, match="\\[-1, 1\\]"):
        gs.run(recipe, prior, torch.full((3, 16, 16), 3.0))
    with pytest.raises(gs.InputError, match="cannot use a dict"):
        gs.run(recipe, prior, {"not": "an image"})
    with pytest.raises(gs.InputError, match="does not exist"):
        gs.run(recipe, prior, "no/such/face.png")


def test_trajectory_and_save(prior, tmp_path):
    out = gs.run(gs.load_recipe("restore", set=FAST), prior, FACE, trajectory=4)
    assert len(out.trajectory) == 4 and out.trajectory.x0.shape == (4, 3, 64, 64)
    assert out.trajectory.t == sorted(out.trajectory.t, reverse=True)
    names = out.save(tmp_path)
    assert names == [f"{FACE.stem}.png", f"{FACE.stem}_compare.png", f"{FACE.stem}_trajectory.png"]
    assert all((tmp_path / n).is_file() for n in names)
    with pytest.raises(gs.OutputError, match="already exist"):
        out.save(tmp_path)
    saved = gs.read_image(tmp_path / names[0]).tensor
    assert (saved - out.image).abs().max() <= 1.0 / 255 + 1e-6


def test_cli_and_api_give_the_same_image(prior, tmp_path):
    from guidestack.cli.main import main

    code = main(
        [
            "run",
            "restore",
            str(FACE),
            "-o",
            str(tmp_path),
            "--steps",
            "12",
            "--quiet",
            "--seed",
            "4",
            "--prior",
            "gaussian-faces-64",
        ]
    )
    assert code == 0
    out = gs.run(gs.load_recipe("restore", set={"sampler.steps": 12}), prior, FACE, seed=4)
    out.save(tmp_path / "api")
    cli = gs.read_image(tmp_path / f"{FACE.stem}.png").tensor
    api = gs.read_image(tmp_path / "api" / f"{FACE.stem}.png").tensor
    assert torch.equal(cli, api)


# --- custom losses -------------------------------------------------------------------------------


def brightness(x0, obs):
    return (x0.mean(dim=(1, 2, 3)) - 0.6).pow(2) * x0[0].numel()


def test_a_plain_loss_guides_the_run(prior):
    recipe = gs.load_recipe(
        {"sampler": {"kind": "ddpm", "steps": 20}, "guidance": {"rule": "dynamic", "scale": 0.5}}
    )
    free = gs.run(recipe, prior, torch.zeros(3, 64, 64), seed=1)
    guided = gs.run(recipe, prior, torch.zeros(3, 64, 64), seed=1, loss=brightness)
    assert abs(float(guided.image.mean()) - 0.6) < abs(float(free.image.mean()) - 0.6) - 0.2


def test_a_loss_that_cannot_act_is_refused(prior):
    ddim = gs.load_recipe({"sampler": {"kind": "ddim", "eta": 0.0}})
    with pytest.raises(gs.RecipeError, match="mean_shift"):
        gs.run(ddim, prior, torch.zeros(3, 64, 64), loss=brightness)
    zero = gs.load_recipe({"sampler": {"kind": "ddpm"}, "guidance": {"scale": 0.0}})
    with pytest.raises(gs.RecipeError, match="no effect"):
        gs.run(zero, prior, torch.zeros(3, 64, 64), loss=brightness)
    with pytest.raises(TypeError, match="callable"):
        gs.run("restore", prior, FACE, loss=3)


def test_loss_failures_name_the_function(prior):
    def broken(x0, obs):
        raise ValueError("boom")

    recipe = gs.load_recipe({"sampler": {"kind": "ddpm", "steps": 3}})
    with pytest.raises(gs.StageError, match="'broken'.*boom"):
        gs.run(recipe, prior, torch.zeros(3, 64, 64), loss=broken)


def test_guidance_decorator_makes_a_registered_stage_with_options(prior):
    @gs.guidance("api-test-level", description="pull the mean to a level", weight=2.0)
    def level(x0, obs, t, *, target: float = 0.0, power: int = 2):
        assert isinstance(t, int)
        return (x0.mean(dim=(1, 2, 3)) - target).abs().pow(power) * x0[0].numel()

    assert issubclass(level, gs.Stage) and level.name == "api-test-level"
    fields = level.Options.model_fields
    assert fields["weight"].default == 2.0 and fields["target"].default == 0.0
    registry = gs.registry()
    gs.register(level, registry=registry)
    recipe = gs.load_recipe(
        {
            "sampler": {"kind": "ddpm", "steps": 15},
            "guidance": {"rule": "dynamic", "scale": 0.5},
            "stage": [{"use": "api-test-level", "target": -0.5}],
        }
    )
    out = gs.run(recipe, prior, torch.zeros(3, 64, 64), seed=2)
    assert float(out.image.mean()) < -0.3
    with pytest.raises(gs.RecipeError, match="stage\\[0\\].power"):
        gs.load_recipe({"stage": [{"use": "api-test-level", "power": "many"}]})
    info = gs.explain("api-test-level")[0]
    assert set(info["options"]) >= {"target", "power", "weight", "window"}
    with pytest.raises(ValueError, match="lowercase"):
        gs.guidance("Bad Name")
    with pytest.raises(TypeError, match="clashes"):

        @gs.guidance("api-test-clash")
        def clash(x0, obs, *, weight: float = 1.0):
            return x0.sum()


# --- faces and listings ----------------------------------------------------------------------------


def test_faces_options_are_checked_before_running(prior):
    with pytest.raises(gs.UsageError, match="upscale"):
        gs.run("restore", prior, FACE, faces={"upscale": 0})
    with pytest.raises(gs.UsageError, match="threshold"):
        gs.run("restore", prior, FACE, faces={"threshold": 5})
    with pytest.raises(gs.UsageError, match="mask"):
        gs.run("inpaint", prior, MASKED, mask=MASK, faces=True)


def test_faces_run_restores_the_face_of_a_photo(prior):
    photo = EXAMPLES / "astronaut.png"
    out = gs.run(gs.load_recipe("restore", set=FAST), prior, photo, faces={"min_face": 20})
    assert out.image.shape == out.input.shape == gs.read_image(photo).tensor.shape
    assert len(out.crops) == 1 and out.crops[0].after.shape == (3, 64, 64)
    assert out.entry["face_seeds"] == [gs.derive_seed(out.seed, "face00")]


def test_listings():
    names = [r["name"] for r in gs.list_recipes()]
    assert "inpaint" in names and "restore" in names
    plugin = next(p for p in gs.list_plugins() if p["name"] == "builtin")
    assert {"faces"} <= {p["name"] for p in plugin["pipelines"]}
    assert {"bench", "degrade"} <= {c["name"] for c in plugin["commands"]}
