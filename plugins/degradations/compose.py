"""Compositions: ``H = H_n o ... o H_1``, e.g. blur then downsample, or gray then mask.

A composition is linear when its parts are; its adjoint chains the parts' adjoints in reverse.
Its pseudo-inverse chains the parts' pseudo-inverses in reverse, ``H^+ = H_1^+ ... H_n^+``, which
is exact when every part but the last is a scaled co-isometry (``H_i H_i^T = c I``: identity,
area downsampling, grayscale): then ``H H^T = c H_n H_n^T`` and ``H^+ = H^T (H H^T)^+``
collapses to the chain.  So gray-then-mask and gray-then-downsample (DDNM's old-photo operator,
in this order) have one; mask-then-downsample does not (a block with missing pixels is not a
block mean any more) and says so.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from guidestack.engine.context import Observation

from .base import Degradation
from .options import ComposeOptions


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from guidestack.engine.registry import default_registry

    return default_registry()


class Compose(Degradation):
    """Applies its parts in order; :meth:`measure` chains the parts' own ``measure`` (only the
    resolution and colour changes act on an observation), :meth:`simulate` chains ``simulate``.
    Put masks first or anywhere: a mask adapts to the resolution it meets."""

    name = "compose"
    description = "Applies several degradations in order (e.g. blur then downsample)."
    Options = ComposeOptions

    def __init__(self, options: BaseModel | None = None, registry: Any = None):
        super().__init__(options, registry)
        reg = _registry(registry)
        self.ops = nn.ModuleList([ref.build(reg) for ref in self.options.ops])

    @classmethod
    def needs_mask(cls, options: BaseModel) -> bool:
        reg = _registry(None)
        for ref in options.ops:
            entry = reg.get("degradation", ref.use)
            if entry is not None and entry.obj.needs_mask(
                entry.options.model_validate(ref.options_dict())
            ):
                return True
        return False

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return all(op.linear for op in self.ops)

    def prepare(self, observation: Observation) -> None:
        for op in self.ops:
            op.prepare(observation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x)
        return x

    def output_side(self, side: int) -> int:
        for op in self.ops:
            side = op.output_side(side)
        return side

    def measurement_side(self, side: int) -> int:
        """The chain's output side when every part that changes the size reads its observation
        at its output size (a low-resolution photo), else the images' own side."""
        current = side
        for op in self.ops:
            out = op.output_side(current)
            if out != current and op.measurement_side(current) != out:
                return side
            current = out
        return current

    def measure(self, y: torch.Tensor, side: int | None = None) -> torch.Tensor:
        side = int(y.shape[-1]) if side is None else side
        for op in self.ops:
            y = op.measure(y, side)
            side = op.output_side(side)
        return y

    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op.simulate(x)
        return x

    # --- linear algebra -----------------------------------------------------------------

    @property
    def coisometry(self) -> float | None:
        scale = 1.0
        for op in self.ops:
            c = op.coisometry
            if c is None:
                return None
            scale *= c
        return scale

    @property
    def has_pinv(self) -> bool:
        inner = all(op.coisometry is not None for op in self.ops[:-1])
        return self.linear and inner and self.ops[-1].has_pinv

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        for op in reversed(self.ops):
            y = op.adjoint(y)
        return y

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        if not self.has_pinv:
            parts = ", ".join(op.name for op in self.ops)
            raise NotImplementedError(
                f"this composition ({parts}) has no closed-form pseudo-inverse: every part but "
                "the last must satisfy H H^T = c I (identity, area downsample, grayscale) and "
                "the last must have one (e.g. put grayscale before a mask, not after)"
            )
        for op in reversed(self.ops):
            y = op.pinv(y)
        return y

    @property
    def mask(self) -> torch.Tensor | None:
        return next((op.mask for op in self.ops if op.mask is not None), None)

    @property
    def suggested_lr(self) -> float | None:
        rates = [op.suggested_lr for op in self.ops if op.suggested_lr is not None]
        return min(rates) if rates else None

    def describe(self) -> dict[str, Any]:
        return {
            "use": self.name,
            "noise": self.options.noise,
            "ops": [op.describe() for op in self.ops],
        }
