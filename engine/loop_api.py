"""What outer-optimisation stages and ``finalize`` hooks receive about the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .context import InitialLatent


@dataclass
class RunResult:
    """The output of a run; ``finalize`` hooks may replace ``image``."""

    image: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


class LoopHandle(Protocol):
    """The loop as seen by an ``optimise`` stage (SHRED)."""

    def sample(self, initial: InitialLatent) -> torch.Tensor:
        """Run the ordinary reverse loop from ``initial`` and return x0."""

    def guidance_loss(self, x0: torch.Tensor, t: int) -> torch.Tensor | None:
        """Sum of the other stages' weighted guidance losses on ``x0`` (per sample), keeping
        the graph so the caller can differentiate through it; ``None`` if no stage guides."""
