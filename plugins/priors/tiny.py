"""A tiny random UNet for tests and benchmarks.

No pretrained face diffusion model can be downloaded on the project's machines, so the
``diffusers`` backend is exercised on a small randomly initialised ``UNet2DModel`` saved the way
diffusers saves real models.  Its outputs are meaningless as images; its shapes, config files and
code paths are the real ones.  Seeded, so every test and benchmark sees the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel


def build_tiny_unet(
    sample_size: int = 16, in_channels: int = 3, out_channels: int = 3, seed: int = 0
) -> UNet2DModel:
    """A two-level plain (attention-free) UNet with about 0.65 M parameters, seeded weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )
    return unet.eval()


def tiny_scheduler(
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
) -> DDPMScheduler:
    """The DDPM scheduler that goes with the tiny UNet (diffusers' defaults otherwise)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        variance_type=variance_type,
    )


def save_tiny_unet(
    folder: str | Path,
    *,
    sample_size: int = 16,
    out_channels: int = 3,
    seed: int = 0,
    prediction_type: str = "epsilon",
    variance_type: str | None = None,
    beta_schedule: str = "linear",
    layout: str = "flat",
) -> Path:
    """Save a tiny UNet plus its scheduler config into ``folder`` and return the folder.

    ``layout="flat"`` writes ``config.json``, the weights and ``scheduler_config.json`` side by
    side (the google/ddpm-* hub repos); ``layout="pipeline"`` writes ``unet/`` and ``scheduler/``
    subfolders (what ``DiffusionPipeline.save_pretrained`` makes).  ``out_channels=6`` with the
    default ``variance_type`` gives a learned-range variance model.
    """
    if layout not in ("flat", "pipeline"):
        raise ValueError(f"layout must be 'flat' or 'pipeline', not {layout!r}")
    if variance_type is None:
        variance_type = "learned_range" if out_channels == 6 else "fixed_small"
    folder = Path(folder)
    unet_dir = folder / "unet" if layout == "pipeline" else folder
    sched_dir = folder / "scheduler" if layout == "pipeline" else folder
    build_tiny_unet(sample_size, 3, out_channels, seed).save_pretrained(unet_dir)
    tiny_scheduler(prediction_type, variance_type, beta_schedule).save_pretrained(sched_dir)
    return folder
