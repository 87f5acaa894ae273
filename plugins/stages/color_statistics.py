"""PGDiff's colour-statistics property: per-channel mean and std of x0 follow target statistics.

Loss (per sample, sum-reduced): ``||x0 - AdaIN(x0; mu*, sigma*)||^2`` where AdaIN re-normalises
each channel of x0 to mean ``mu*`` and std ``sigma*`` (clamped to [-1, 1] as the official code
does).  The paper stops the gradient through the AdaIN target (default); the official code does
not (``stop_gradient = false``).  It is a lenient constraint: lightness fixes the structure, this
only picks a colour tone.

Target statistics (``statistics``):
- ``celeba-hq`` (default): the paper's CelebA-HQ average, in [-1, 1] space;
- ``custom``: ``mean`` and ``std`` given in the options;
- ``reference``: each sample's reference image (``--reference``), computed per sample;
- ``folder``: the average of per-image statistics over the images in ``path`` (a folder or one
  image), as the official ``color_stat_calculation.py`` computes them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.errors import InputError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import Stage

from .pgdiff_options import ColorStatisticsOptions
from .properties import block_gradient_where_missing, known_pixels, require_input, sum_per_sample

#: the paper's CelebA-HQ colour statistics (official code), images in [-1, 1]
CELEBA_HQ_MEAN = (0.03202754, -0.16308397, -0.26475719)
CELEBA_HQ_STD = (0.53549316, 0.47539538, 0.46814889)
#: added to the variance before the square root, as in the official AdaIN
EPS = 1e-5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std (``[N, C, 1, 1]`` each) of ``[N, C, H, W]``."""
    flat = x.flatten(2)
    mean = flat.mean(dim=2)[..., None, None]
    std = (flat.var(dim=2) + EPS).sqrt()[..., None, None]
    return mean, std


def adain(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Re-normalise each channel of ``x`` to ``mean``/``std``, clamped to the image range."""
    own_mean, own_std = channel_stats(x)
    return ((x - own_mean) / own_std * std + mean).clamp(-1.0, 1.0)


def folder_statistics(path: str | Path) -> tuple[list[float], list[float]]:
    """Average per-image channel statistics of the images in a folder (or of one image)."""
    from guidestack.io.images import read_image

    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        raise InputError(f"colour statistics: {p} is neither a folder nor an image file")
    if not files:
        raise InputError(f"colour statistics: no image ({', '.join(IMAGE_SUFFIXES)}) in {p}")
    means, stds = [], []
    for f in files:
        mean, std = channel_stats(read_image(f).tensor[None].double())
        means.append(mean.flatten())
        stds.append(std.flatten())
    return torch.stack(means).mean(0).tolist(), torch.stack(stds).mean(0).tolist()


class ColorStatistics(Stage):
    name = "color-statistics"
    description = "PGDiff colour property: ||x0 - AdaIN(x0; mu*, sigma*)||^2 (CelebA-HQ, custom, reference or folder stats)."
    Options = ColorStatisticsOptions

    @classmethod
    def requires_for(cls, options: ColorStatisticsOptions) -> tuple[str, ...]:
        return ("reference",) if options.statistics == "reference" else ()

    def setup(self, ctx: RunContext) -> None:
        o = self.options
        if o.statistics == "reference":
            ref = require_input(ctx, "reference", self.id, "its colours are the target statistics")
            self.mean, self.std = channel_stats(ref.double())
            return
        if o.statistics == "folder":
            mean, std = folder_statistics(o.path)
        elif o.statistics == "custom":
            mean, std = list(o.mean), list(o.std)
        else:
            mean, std = list(CELEBA_HQ_MEAN), list(CELEBA_HQ_STD)
        self.mean = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        ctx.report.setdefault("color_statistics", {})[self.id] = {"mean": mean, "std": std}

    def target_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target mean/std for the batch, on ``like``'s device and dtype."""
        return (
            self.mean.to(device=like.device, dtype=like.dtype),
            self.std.to(device=like.device, dtype=like.dtype),
        )

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        x0 = state.x0
        if self.options.mask_gradient:
            x0 = block_gradient_where_missing(x0, known_pixels(ctx, x0))
        mean, std = self.target_stats(x0)
        target = adain(x0, mean, std)
        if self.options.stop_gradient:
            target = target.detach()
        return sum_per_sample((x0 - target).pow(2))
