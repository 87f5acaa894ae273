"""Golden numbers from the official code of the four methods, and the tiny denoisers they used.

``tests/data/golden/README.md`` says where each file comes from (repository, commit, function,
seed), how its noise was drawn and how guidestack must be run to reproduce it.  The official
code ran once, outside the project, on the networks built here: a seeded diffusers
``UNet2DModel`` (BIRD), a seeded guided-diffusion UNet with learned-range variance (PGDiff), and
the exact Gaussian prior ``guidestack.testing.tiny_prior(16)`` where a random UNet amplifies
float32 rounding above 1e-4 (DifFace, CODE).  Weights come from :func:`keylists.seeded_state_dict`,
one generator per tensor seeded by its key, so they do not depend on construction order.
"""

from __future__ import annotations

from pathlib import Path

import torch
from keylists import seeded_state_dict

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"

#: every golden file, by setup name
SETUPS = (
    "pgdiff-restore",
    "pgdiff-restore-repeats",
    "pgdiff-colorize",
    "pgdiff-inpaint",
    "difface-restore",
    "difface-inpaint",
    "code",
    "bird-inpaint",
    "bird-sr",
)

UNET_SEED = 7
ADM_SEED = 11

#: diffusers UNet2DModel of the BIRD runs (eps prediction, 177k parameters)
UNET2D_CONFIG = {
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": (16, 32),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}

#: the scheduler config of google/ddpm-ema-celebahq-256 (and of the UNet prior here)
SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "variance_type": "fixed_small",
}

#: guided-diffusion UNet of the PGDiff runs: PGDiff's create_model(image_size=16,
#: num_channels=32, num_res_blocks=[1, 1], channel_mult="1,2", learn_sigma=True,
#: attention_resolutions="8", num_head_channels=16, use_scale_shift_norm=True)
ADM_CONFIG = {
    "image_size": 16,
    "model_channels": 32,
    "channel_mult": (1, 2),
    "num_res_blocks": (1, 1),
    "attention_resolutions": (8,),
    "out_channels": 6,
    "num_heads": 1,
    "num_head_channels": 16,
    "use_scale_shift_norm": True,
}


def load(name: str) -> dict:
    """The golden record of setup ``name`` (tensors, lists, numbers and provenance strings)."""
    return torch.load(GOLDEN / f"{name}.pt", weights_only=True)


def unet_prior():
    """The seeded tiny UNet2DModel as a guidestack prior (diffusers' float32 schedule)."""
    from diffusers import UNet2DModel

    from guidestack.plugins.priors.diffusers_prior import DiffusersPrior

    unet = UNet2DModel(**UNET2D_CONFIG)
    shapes = {k: list(v.shape) for k, v in unet.named_parameters()}
    unet.load_state_dict(seeded_state_dict(shapes, {}, seed=UNET_SEED), strict=True)
    return DiffusersPrior(unet.eval(), SCHEDULER, name="golden-unet2d")


def adm_prior():
    """The seeded tiny guided-diffusion UNet (learned-range variance) as a guidestack prior."""
    from guidestack.plugins.priors.adm import ADMPrior
    from guidestack.plugins.priors.adm_unet import ADMConfig, ADMUNet

    unet = ADMUNet(ADMConfig(**ADM_CONFIG))
    shapes = {k: list(v.shape) for k, v in unet.state_dict().items()}
    unet.load_state_dict(seeded_state_dict(shapes, {}, seed=ADM_SEED), strict=True)
    return ADMPrior(unet, name="golden-adm")


def gaussian_prior(schedule: str | None = None):
    """``tiny_prior(16)``; with the CODE record's schedule, alpha_bar as diffusers' float32
    ``DDPMScheduler`` computes it (the notebook reads it from there: at t = 0, 1 - alpha_bar
    differs from the float64 schedule by 2e-4 relative, which moves the t = 0 inversion step by
    1e-5)."""
    from guidestack.testing import tiny_prior

    prior = tiny_prior(16)
    if schedule == "diffusers DDPMScheduler (float32)":
        from diffusers import DDPMScheduler

        config = {k: v for k, v in SCHEDULER.items() if k != "_class_name"}
        prior.alphas_cumprod = DDPMScheduler(**config).alphas_cumprod.to(torch.float64)
    return prior


def prior_for(record: dict):
    """The denoiser a golden record was made with."""
    denoiser = record["denoiser"]
    if denoiser.startswith("guidestack.testing.tiny_prior"):
        return gaussian_prior(record.get("schedule"))
    if denoiser.startswith("tiny ADM"):
        return adm_prior()
    return unet_prior()
