"""Outputs at the photo's own size: what the degradation left intact comes from the input at
full resolution, the rest from the (upsampled) restoration; never a thumbnail of the input."""

from __future__ import annotations

import json

import kornia
import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

import guidestack as gs
from guidestack.cli.main import main
from guidestack.finish import finish
from guidestack.io.images import to_square

FAST = {"sampler.steps": 12}


@pytest.fixture(scope="module")
def prior():
    return gs.load_prior("gaussian-faces-64")


def luma(x: torch.Tensor) -> torch.Tensor:
    return kornia.color.rgb_to_ycbcr((x[None] + 1) / 2)[0, 0]


def test_inpainting_keeps_every_known_pixel_of_the_full_resolution_input(prior):
    masked, mask = EXAMPLES / "astronaut_masked.png", EXAMPLES / "astronaut_mask.png"
    out = gs.run(gs.load_recipe("inpaint", set=FAST), prior, masked, mask=mask, upsampler="bicubic")
    given = gs.read_image(masked).tensor
    missing = gs.read_image(mask, kind="mask").tensor[0] > 0.5
    assert out.image.shape == given.shape == (3, 128, 128)
    facts = out.entry["output"]
    assert facts["keep"] == "known" and facts["known_max_abs_diff"] == 0.0
    # beyond the seam (2 prior pixels = 4 output pixels, 3 sigma) the input's own pixels
    near = torch.nn.functional.max_pool2d(missing[None, None].float(), 27, 1, 13)[0, 0] > 0
    assert torch.equal(out.image[:, ~near], given[:, ~near])
    assert (out.image[:, missing] - given[:, missing]).abs().mean() > 0.05  # the hole was filled
    restored = to_square(out.restored, 128)[0]  # inside the hole: the restoration, upsampled
    assert (out.image[:, missing] - restored[:, missing]).abs().max() < 0.1


def test_inpainting_at_full_size_is_closer_to_the_truth_than_the_input(prior):
    masked, mask = EXAMPLES / "astronaut_masked.png", EXAMPLES / "astronaut_mask.png"
    truth = gs.read_image(EXAMPLES / "astronaut.png").tensor
    out = gs.run(gs.load_recipe("inpaint", set=FAST), prior, masked, mask=mask)
    given = gs.read_image(masked).tensor

    def psnr(x):
        return 10 * np.log10(4 / float((x - truth).pow(2).mean()))

    assert psnr(out.image) > psnr(given) + 3.0


def test_colorization_keeps_the_inputs_luminance(prior):
    gray = EXAMPLES / "astronaut_gray.png"
    out = gs.run(gs.load_recipe("colorize", set=FAST), prior, gray, upsampler="bicubic")
    given = gs.read_image(gray).tensor
    assert out.image.shape == given.shape
    assert (luma(out.image) - luma(given)).abs().max() < 2e-3  # brightness: the input's
    chroma = (out.image - out.image.mean(dim=0, keepdim=True)).abs().mean()
    assert chroma > 0.01  # colour: the restoration's


def test_old_photo_keeps_luminance_outside_the_scratches_only(prior):
    old, mask = EXAMPLES / "grace_hopper_old.png", EXAMPLES / "grace_hopper_old_mask.png"
    out = gs.run(gs.load_recipe("old-photo", set=FAST), prior, old, mask=mask, upsampler="bicubic")
    given = gs.read_image(old).tensor
    missing = gs.read_image(mask, kind="mask").tensor[0] > 0.5
    near = torch.nn.functional.max_pool2d(missing[None, None].float(), 27, 1, 13)[0, 0] > 0
    diff = (luma(out.image) - luma(given)).abs()
    assert diff[~near].max() < 2e-3
    assert diff[missing].mean() > 0.02


def test_output_size_choices(prior):
    recipe = gs.load_recipe("restore", set=FAST)
    face = EXAMPLES / "astronaut_degraded.png"
    assert gs.run(recipe, prior, face).image.shape == (3, 128, 128)
    assert gs.run(recipe, prior, face, output_size="prior").image.shape == (3, 64, 64)
    assert gs.run(recipe, prior, face, output_size=96).image.shape == (3, 96, 96)
    small = gs.run(recipe, prior, face, output_size=32)
    assert small.image.shape == (3, 32, 32) and small.entry["output"]["size"] == [32, 32]
    for bad in (0, 5, 20000, "huge", True):
        with pytest.raises(gs.UsageError, match="output size"):
            gs.run(recipe, prior, face, output_size=bad)
    with pytest.raises(gs.UsageError, match="unknown upsampler 'lanczos'"):
        gs.run(recipe, prior, face, upsampler="lanczos")


def test_a_non_square_input_comes_back_at_its_crop_size(prior, tmp_path):
    wide = np.asarray(Image.open(EXAMPLES / "astronaut_degraded.png").resize((150, 100)))
    out = gs.run(gs.load_recipe("restore", set=FAST), prior, wide)
    assert out.image.shape == (3, 100, 100)  # the centred square the prior saw, in input pixels
    assert out.entry["placement"]["box"] == [25, 0, 125, 100]


def test_upsamplers_differ_and_realesrgan_is_sharper(prior):
    recipe = gs.load_recipe("restore", set=FAST)
    face = EXAMPLES / "astronaut_degraded.png"
    bicubic = gs.run(recipe, prior, face, upsampler="bicubic")
    assert bicubic.entry["output"]["upsampler"] == "bicubic"
    if gs.registry().get("upsampler", "realesrgan-x4").obj.unavailable() is not None:
        pytest.skip("the realesrgan extra is not installed")
    auto = gs.run(recipe, prior, face)
    assert auto.entry["output"]["upsampler"] == "realesrgan-x4"
    assert torch.equal(auto.restored, bicubic.restored)  # same restoration, other upsampling

    def high_frequency(x):
        return float(kornia.filters.laplacian(x[None], 3).pow(2).mean())

    assert high_frequency(auto.image) > 1.2 * high_frequency(bicubic.image)


def test_finish_without_a_mask_falls_back_honestly():
    restored = torch.zeros(3, 8, 8)
    original = torch.rand(3, 16, 16) * 2 - 1
    _, placement = to_square(original, 8)
    from guidestack.engine.upsampler import Upsampler, resize

    class Nearest(Upsampler):
        name = "nearest"

        def __call__(self, images, size):
            return resize(images, size, "nearest")

    known = finish(
        restored, original, placement, side=16, keep="known", upsampler=Nearest(), feather=1
    )
    assert torch.equal(known.image, torch.zeros(3, 16, 16))  # nothing known: all restored
    lum = finish(
        restored,
        original,
        placement,
        side=16,
        keep="known-luminance",
        upsampler=Nearest(),
        feather=1,
    )
    assert (luma(lum.image) - luma(original)).abs().max() < 2e-3


def test_cli_output_size_and_upsampler(tmp_path):
    face = EXAMPLES / "astronaut_degraded.png"
    base = ["run", "restore", str(face), "--prior", "gaussian-faces-64", "--steps", "8", "--quiet"]
    assert main([*base, "-o", str(tmp_path / "a"), "--output-size", "prior"]) == 0
    assert Image.open(tmp_path / "a" / f"{face.stem}.png").size == (64, 64)
    assert main([*base, "-o", str(tmp_path / "b"), "--upsampler", "bicubic"]) == 0
    assert Image.open(tmp_path / "b" / f"{face.stem}.png").size == (128, 128)
    entry = json.loads((tmp_path / "b" / "run.json").read_text())["inputs"][0]
    assert entry["output"]["upsampler"] == "bicubic"
    assert main([*base, "-o", str(tmp_path / "c"), "--output-size", "big"]) == 2
    assert main([*base, "-o", str(tmp_path / "d"), "--upsampler", "lanczos"]) == 2
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
