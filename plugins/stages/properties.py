"""Pieces shared by PGDiff's property stages: grayscale, masks, per-sample reductions, caches.

PGDiff's losses are sum-reduced squared errors taken on a detached copy of x0.  Every reduction
here is per sample (a batch of N must equal N single runs), and every mask follows
:class:`~guidestack.engine.context.Observation`: 1 where a pixel is MISSING.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from guidestack.engine.context import RunContext
from guidestack.engine.errors import InputError


def gray(x: torch.Tensor) -> torch.Tensor:
    """PGDiff's lightness classifier: the mean of R, G, B, repeated on the channels.

    Repeating (as the official ``avg_grayscale`` does) keeps the paper's loss scale: the
    sum-reduced error of a gray image counts each pixel once per channel.
    """
    return x.mean(dim=1, keepdim=True).expand_as(x)


def sum_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Sum over every non-batch dimension: ``[N, ...] -> [N]``."""
    return x.flatten(1).sum(dim=1)


def known_pixels(ctx: RunContext, like: torch.Tensor) -> torch.Tensor | None:
    """``[N, 1, H, W]`` with 1 where the observation's pixel is known; ``None`` without a mask."""
    mask = ctx.observation.mask
    if mask is None:
        return None
    return (mask < 0.5).to(device=like.device, dtype=like.dtype)


def block_gradient_where_missing(x0: torch.Tensor, known: torch.Tensor | None) -> torch.Tensor:
    """``x0`` unchanged in value, but no gradient flows to the missing pixels.

    This is how one stage can zero its gradient inside the mask (PGDiff's official old-photo
    code zeroes the summed gradient there) without touching other stages' gradients.
    """
    if known is None:
        return x0
    return known * x0 + (1.0 - known) * x0.detach()


def require_input(ctx: RunContext, what: str, stage_id: str, why: str) -> torch.Tensor:
    """The observation's ``mask`` or ``reference``, or an :class:`InputError` saying how to give it."""
    value = getattr(ctx.observation, what)
    if value is None:
        flag = "--mask FILE (white = missing)" if what == "mask" else "--reference FILE"
        raise InputError(f"stage '{stage_id}' needs a {what} ({why}); pass {flag}")
    if value.shape[0] != ctx.batch_size:
        raise InputError(
            f"stage '{stage_id}': {value.shape[0]} {what}(s) for {ctx.batch_size} image(s)"
        )
    return value


def per_sample(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a network to each sample on its own and stack the results.

    Batched convolutions on CPU pick different kernels for different batch sizes, so a network
    run on a batch is not bit-identical to single runs; one sample at a time is, by construction.
    """
    return torch.cat([fn(x[i : i + 1].contiguous()) for i in range(x.shape[0])])


def run_network(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, deterministic: bool
) -> torch.Tensor:
    """A network on the batch: one batched call by default (as fast as the hardware allows,
    equal to single runs up to float rounding), one call per sample in ``deterministic`` runs
    (``ctx.deterministic``), bit-identical to single runs."""
    return per_sample(fn, x) if deterministic else fn(x)


_MODEL_CACHE: dict[tuple[Any, ...], Any] = {}


def cached_model(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """One loaded network per key (file, mtime, device...), shared by every run in a process."""
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = build()
    return _MODEL_CACHE[key]


def file_key(path: str | Path) -> tuple[str, float, int]:
    """A cache key that changes when the file does."""
    p = Path(path).expanduser().resolve()
    stat = p.stat()
    return (str(p), stat.st_mtime, stat.st_size)


def user_file(path: str, stage_id: str, what: str) -> Path:
    """An existing file named in a stage's options, or an :class:`InputError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"stage '{stage_id}': {what} file {p} does not exist")
    return p
