"""Plain recipes run through the production path equal diffusers' pipelines.

The same seeded tiny ``UNet2DModel`` drives the public API (``guidestack.run`` with a recipe
dict, ``guidestack.load_prior(unet, scheduler=...)``) and diffusers' ``DDIMPipeline`` /
``DDPMPipeline``, with one generator per sample on both sides (``seeds=``); the images must agree to 1e-4 (in [-1, 1]).  DDIM
re-derives its direction from the clipped x0 (``use_clipped_model_output=True`` on diffusers'
side); DDPM runs the full 1000-step grid, where guided-diffusion's respacing (ours) and
diffusers' leading spacing are the same grid.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel

import guidestack as gs
from guidestack.plugins.priors.tiny import build_tiny_unet, tiny_scheduler

SEEDS = [7, 8]
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def ours(registry, unet, config, sampler) -> torch.Tensor:
    scheduler = DDPMScheduler.from_config(config)
    prior = gs.load_prior(unet, scheduler=scheduler, registry=registry)
    size = prior.image_size
    results = gs.run(
        {"sampler": sampler},
        prior,
        torch.zeros(len(SEEDS), 3, size, size),
        seeds=SEEDS,
        output_size="prior",
        registry=registry,
    )
    return torch.stack([r.image for r in results])


def generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in SEEDS]


def pixels(images: torch.Tensor) -> torch.Tensor:
    """A pipeline's ``output_type="pt"`` images ([0, 1]) back in [-1, 1]."""
    return images * 2 - 1


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_recipe_equals_ddim_pipeline(registry, eta):
    unet = build_tiny_unet(16)
    config = dict(tiny_scheduler().config)  # clip_sample = True, as diffusers' default
    image = ours(registry, unet, config, {"kind": "ddim", "steps": 25, "eta": eta})
    pipe = DDIMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        batch_size=len(SEEDS),
        generator=generators(),
        eta=eta,
        num_inference_steps=25,
        use_clipped_model_output=True,
        output_type="pt",
    ).images
    diff = float((image - pixels(expected)).abs().max())
    assert diff < TOL, diff  # measured 2e-6 to 6e-6


def one_level_unet(out_channels: int) -> UNet2DModel:
    """A seeded one-level UNet at 8x8: 1000 steps on both sides stay a few seconds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DModel(
            sample_size=8,
            in_channels=3,
            out_channels=out_channels,
            block_out_channels=(8,),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D",),
            up_block_types=("UpBlock2D",),
        ).eval()


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_ddpm_recipe_equals_ddpm_pipeline(registry, variance):
    unet = one_level_unet(6 if variance == "learned_range" else 3)
    config = dict(tiny_scheduler(variance_type=variance).config)
    image = ours(registry, unet, config, {"kind": "ddpm", "steps": 1000})
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        batch_size=len(SEEDS), generator=generators(), num_inference_steps=1000, output_type="pt"
    ).images
    diff = float((image - pixels(expected)).abs().max())
    # measured 3.5e-5: diffusers does its schedule arithmetic in float32, we in float64
    assert diff < TOL, diff
