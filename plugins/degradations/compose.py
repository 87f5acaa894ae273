"""Compositions: ``H = H_n o ... o H_1``, e.g. blur then downsample, or downsample then gray."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from guidestack.engine.context import Observation
from guidestack.engine.refs import DegradationRef

from .base import Degradation, DegradationOptions


class ComposeOptions(DegradationOptions):
    ops: list[DegradationRef] = Field(
        min_length=1,
        description='operators applied in order, e.g. [{use = "gaussian-blur-kernel", sigma = 2}, '
        '{use = "downsample", factor = 4}]',
    )


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

    def prepare(self, observation: Observation) -> None:
        for op in self.ops:
            op.prepare(observation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x)
        return x

    def measure(self, y: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            y = op.measure(y)
        return y

    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op.simulate(x)
        return x

    @property
    def mask(self) -> torch.Tensor | None:
        return next((op.mask for op in self.ops if op.mask is not None), None)

    @property
    def suggested_lr(self) -> float | None:
        rates = [op.suggested_lr for op in self.ops if op.suggested_lr is not None]
        return min(rates) if rates else None

    def describe(self) -> dict[str, Any]:
        return {"use": self.name, "ops": [op.describe() for op in self.ops]}
