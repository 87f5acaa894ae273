"""Outputs at the photo's own size that never throw away what the user gave.

The prior restores a small square (64 px for the offline prior).  What the degradation left
intact comes back from the input at full resolution; only the rest comes from the restoration,
brought to the output's size by an upsampler.  The recipe's ``[output] keep`` says which is
which:

* ``none``: everything from the restoration (blur, noise, low resolution damaged every pixel);
* ``known``: the pixels the mask marks known come from the input (inpainting);
* ``luminance``: the input's brightness, the restoration's colour (colorization);
* ``known-luminance``: the brightness of the known pixels from the input, colour everywhere and
  the damaged pixels from the restoration (old photos: scratches + colorization).

Seams are feathered outwards from the restored pixels, so a known pixel farther than the seam
from any damaged one is the input's own value, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import kornia
import torch

from guidestack.engine.upsampler import Upsampler, resize
from guidestack.io.images import MAX_SIDE, Placement, to_square

#: the output-size choices besides a number of pixels
SIZE_MODES = ("input", "prior")


def output_side(
    output_size: str | int, placement: Placement, prior_size: int, upscale: int = 1
) -> int:
    """The side of the square output: the input's own (the crop the prior saw, in the input's
    pixels; ``upscale`` times it for a super-resolution recipe, whose input is the
    low-resolution photo), the prior's, or a given number of pixels."""
    if output_size == "prior":
        return prior_size
    if output_size == "input":
        return min((placement.box[2] - placement.box[0]) * upscale, MAX_SIDE)
    return int(output_size)


@dataclass
class Finished:
    """The output, what it was made from, and facts for run.json."""

    image: torch.Tensor
    input: torch.Tensor
    mask: torch.Tensor | None
    facts: dict[str, Any]


def finish(
    restored: torch.Tensor,
    original: torch.Tensor,
    placement: Placement,
    *,
    side: int,
    keep: str,
    upsampler: Upsampler,
    feather: float,
    mask: torch.Tensor | None = None,
) -> Finished:
    """The output ``[C, side, side]`` from ``restored`` (``[C, s, s]``, the prior's output) and
    the full-resolution ``original`` (``[C, H, W]``) and ``mask`` (``[1, H, W]``, 1 = missing)."""
    size = restored.shape[-1]
    given = to_square(original, side, mode=placement.mode)[0]
    if side > size:
        out = upsampler(restored[None], (side, side))[0]
    else:
        out = resize(restored[None], (side, side))[0]
    out = out.to(given.dtype)
    facts: dict[str, Any] = {"size": [side, side], "keep": keep, "upsampler": upsampler.name}
    missing = None
    if mask is not None:
        missing = to_square(mask, side, mode=placement.mode, kind="mask")[0].to(given.dtype)
    if keep in ("known", "known-luminance") and missing is None:
        keep = "none" if keep == "known" else "luminance"  # nothing is known to be damaged
    if keep == "none":
        return Finished(out, given, missing, facts)
    soft = None
    if missing is not None:
        soft = _spread(missing, feather * side / size)
    if keep == "known":
        image = soft * out + (1 - soft) * given
    else:
        luma_given, luma_out = _luma(given), _luma(out)
        luma = luma_given if soft is None else soft * luma_out + (1 - soft) * luma_given
        image = _with_colour(luma, (out + 1) / 2 - luma_out)
    if soft is not None:
        untouched = soft == 0
        facts["known_fraction"] = round(float((missing == 0).float().mean()), 4)
        if keep == "known" and bool(untouched.any()):
            diff = (image - given).abs()[:, untouched[0]]
            facts["known_max_abs_diff"] = float(diff.max())
    return Finished(image.clamp(-1.0, 1.0), given, missing, facts)


def _spread(missing: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blend weights: 1 on missing pixels, falling to 0 within ~3 sigma outside them."""
    if sigma <= 0:
        return missing
    k = 2 * math.ceil(3 * sigma) + 1
    blurred = kornia.filters.gaussian_blur2d(
        missing[None], (k, k), (sigma, sigma), border_type="replicate"
    )[0]
    return torch.maximum(missing, blurred.clamp(0, 1))


#: BT.601 luma weights of R, G, B (what kornia's and PIL's YCbCr use)
LUMA = (0.299, 0.587, 0.114)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``[1, H, W]`` luma in [0, 1] of ``x`` ``[3, H, W]`` in [-1, 1]."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return ((x + 1) / 2 * w).sum(dim=0, keepdim=True)


def _with_colour(luma: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """RGB in [-1, 1] whose luma is exactly ``luma`` and whose colour (each channel's offset
    from the luma, which has zero luma itself) is ``colour`` as far as it fits: where it would
    leave the RGB cube it is desaturated, never darkened or brightened as clamping would do."""
    room = torch.where(
        colour > 0, (1 - luma) / colour.clamp_min(1e-12), luma / (-colour).clamp_min(1e-12)
    )
    room = room.where(colour.abs() > 1e-12, torch.ones_like(room))
    scale = room.amin(dim=0, keepdim=True).clamp(0, 1)
    return (luma + scale * colour) * 2 - 1
