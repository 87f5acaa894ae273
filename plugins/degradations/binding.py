"""Operators inside a run: what a solver stage does with its ``operator = { use = ... }``.

Every stage that takes an operator (SHRED, DPS, DDNM, PGDiff's unmasked region, the known-pixel
paste) binds it the same way, so one recipe's stages see the same ``H`` and the same y.
"""

from __future__ import annotations

from typing import Any

import torch

from guidestack.engine.refs import DegradationRef

from .base import Degradation


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from guidestack.engine.registry import default_registry

    return default_registry()


def needs_mask(ref: DegradationRef | None, registry: Any = None) -> bool:
    """Whether the referenced operator reads the observation's mask (``--mask``)."""
    if ref is None:
        return False
    entry = _registry(registry).get("degradation", ref.use)
    if entry is None:
        return False
    return bool(entry.obj.needs_mask(entry.options.model_validate(ref.options_dict())))


def bind(ref: DegradationRef, ctx: Any) -> tuple[Degradation, torch.Tensor]:
    """The operator built, moved to the run's device, prepared for the batch, and y in its
    output space (exact when the run keeps y at its measurement size)."""
    op = ref.build(ctx.registry).to(ctx.device)
    op.prepare(ctx.observation)
    with torch.no_grad():
        y = op.observed(ctx.observation).to(device=ctx.device, dtype=ctx.dtype)
    return op, y.detach()


def relative_residual(op: Degradation, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per sample ``||H x - y|| / ||y||`` (measurement consistency, for reports)."""
    with torch.no_grad():
        r = (op(x.to(y.dtype)) - y).flatten(1).norm(dim=1)
        return (r / y.flatten(1).norm(dim=1).clamp_min(1e-12)).tolist()
