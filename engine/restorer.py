"""Restorers: any function f(y[, x_t, t]) giving a first estimate of the clean image.

PGDiff's smooth-semantics target and DifFace's diffused estimator both use one.  A restorer
whose output does not depend on ``t`` (``depends_on_t = False``, the common case) is computed
once per run and cached, which the engine guarantees through :func:`restore`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel

from .config import RestorerOptions as RestorerOptions  # its home is config (no torch)
from .context import RunContext


class Restorer:
    """Base class: subclasses set ``name``, ``description``, ``Options`` and implement ``restore``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = RestorerOptions
    depends_on_t: ClassVar[bool] = False

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()
        self.calls = 0

    def restore(
        self, y: torch.Tensor, x_t: torch.Tensor | None = None, t: int | None = None
    ) -> torch.Tensor:
        """Return an estimate of the clean image for ``y`` ([N,C,H,W] in [-1, 1])."""
        raise NotImplementedError

    def __call__(
        self, y: torch.Tensor, x_t: torch.Tensor | None = None, t: int | None = None
    ) -> torch.Tensor:
        self.calls += 1
        with torch.no_grad():
            return self.restore(y, x_t, t).clamp(-1.0, 1.0)


def restore(
    ctx: RunContext,
    key: str,
    restorer: Restorer,
    y: torch.Tensor,
    x_t: torch.Tensor | None = None,
    t: int | None = None,
) -> torch.Tensor:
    """Call ``restorer`` once per run when its output ignores ``t``; ``key`` names the cache slot."""
    if restorer.depends_on_t:
        return restorer(y, x_t, t)
    slot = f"restorer:{key}"
    if slot not in ctx.cache:
        ctx.cache[slot] = restorer(y)
    return ctx.cache[slot]
