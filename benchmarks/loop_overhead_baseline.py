"""The baseline our sampler's per-step overhead is measured against: a bare diffusers DDIM loop.

Nothing but ``unet -> DDIMScheduler.step`` with eta 0, as ``DDIMPipeline`` does it, so the time
difference to a guidestack run with no stages is the engine's own overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler


@torch.no_grad()
def diffusers_ddim_loop(
    unet: torch.nn.Module,
    scheduler_config: dict[str, Any],
    steps: int,
    generator_seed: int,
    shape: tuple[int, ...],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[torch.Tensor, float]:
    """Sample with diffusers' DDIM (eta 0, ``steps`` steps); return the final x_0 and its seconds.

    The initial noise is ``torch.randn(shape, generator=torch.Generator().manual_seed(seed))``
    drawn on the CPU, then moved to the UNet's device and dtype, as ``DDIMPipeline`` does with a
    CPU generator, so the same seed gives the same start on every device.  The returned image is the raw
    last sample (float, roughly [-1, 1], not clamped).  The time covers the noise draw and the
    loop, not the scheduler construction.  A learned-variance UNet's variance half is dropped,
    as DDIM ignores it.  ``clock`` measures (wall time by default; ``time.process_time`` is
    the robust choice on a shared machine).
    """
    param = next(unet.parameters())
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(generator_seed)
    start = clock()
    x = torch.randn(shape, generator=generator).to(device=param.device, dtype=param.dtype)
    for t in scheduler.timesteps:
        out = unet(x, t).sample
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x, clock() - start
