"""The degradation plugin type: a forward model ``y = H(x)`` as a differentiable module.

SHRED minimises ``||measure(y) - H(f(x_T))||`` and the benchmarks damage clean faces with the
same operators, so one class serves both:

* ``forward(x)`` is ``H`` itself, differentiable, in its own output space (a 4x downsample
  returns a 16x16 image for a 64x64 input, grayscale returns one channel);
* ``measure(y)`` maps an observation as the engine holds it (the user's image resized to the
  prior's size, see ``to_square``) into that output space, so ``H(x_true) ~= measure(y)``;
* ``simulate(x)`` turns a clean image into the observation a user would pass (``H(x)`` brought
  back to ``x``'s size and channels), i.e. ``measure(simulate(x)) ~= H(x)``.

Blind operators hold ``torch.nn.Parameter`` s with a leading batch dimension (one set per sample,
so a batch equals single runs); SHRED optimises them jointly with x_T.  Operators that need
run data (a mask, the batch size) receive it in :meth:`Degradation.prepare`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from guidestack.engine.config import StrictModel
from guidestack.engine.context import Observation
from guidestack.io.images import to_square


class DegradationOptions(StrictModel):
    """Options of a degradation (subclass per operator)."""


class Degradation(nn.Module):
    """Base class: subclasses set ``name``, ``description``, ``Options`` and implement ``forward``.

    ``severities`` maps levels 1 (mild) .. 5 (severe) to option values so benchmarks can ask for
    "severity 3" of any operator (:meth:`at_severity`); an operator without a table has no levels.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = DegradationOptions
    severities: ClassVar[dict[int, dict[str, Any]]] = {}

    def __init__(self, options: BaseModel | None = None, registry: Any = None):
        super().__init__()
        self.options = options if options is not None else self.Options()

    # --- construction -------------------------------------------------------------------

    @classmethod
    def at_severity(cls, level: int, registry: Any = None, **overrides: Any) -> Degradation:
        """The operator at severity ``level`` (1..5), other options from ``overrides``."""
        if level not in cls.severities:
            known = ", ".join(map(str, sorted(cls.severities))) or "none"
            raise ValueError(f"degradation '{cls.name}' has no severity {level} (levels: {known})")
        options = cls.Options.model_validate({**cls.severities[level], **overrides})
        return cls(options, registry=registry)

    @classmethod
    def needs_mask(cls, options: BaseModel) -> bool:
        """Whether the observation must carry a mask for these options (checked before a run)."""
        return False

    # --- the operator -------------------------------------------------------------------

    def prepare(self, observation: Observation) -> None:
        """Bind to a batch before use (masks, per-sample parameters).  Default: nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``H(x)`` for images ``[N, C, H, W]`` in [-1, 1]; must be differentiable in ``x``."""
        raise NotImplementedError

    def measure(self, y: torch.Tensor) -> torch.Tensor:
        """The observation (at the prior's size) in ``H``'s output space.  Default: unchanged,
        right for operators whose output has the input's size (blur, masks)."""
        return y

    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        """The observation a user would give for the clean ``x``: ``H(x)`` resized back to ``x``'s
        size as the CLI resizes inputs (bicubic) and repeated to ``x``'s channels if needed."""
        with torch.no_grad():
            y = self(x)
            if y.shape[-2:] != x.shape[-2:]:
                if y.shape[-2] != y.shape[-1] or x.shape[-2] != x.shape[-1]:
                    raise ValueError("simulate resizes square images only")
                y, _ = to_square(y, int(x.shape[-1]))
            if y.shape[1] != x.shape[1]:
                y = y.expand(-1, x.shape[1], -1, -1)
        return y.contiguous()

    @property
    def mask(self) -> torch.Tensor | None:
        """``[N or 1, 1, H, W]``, 1 where ``H`` discards a pixel, for masking operators."""
        return None

    @property
    def suggested_lr(self) -> float | None:
        """Adam learning rate for the operator's own parameters (blind operators), if any."""
        return None

    @property
    def blind(self) -> bool:
        """Whether the operator has parameters to estimate (blind restoration)."""
        return any(p.requires_grad for p in self.parameters())

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for run reports (blind operators add their estimates)."""
        return {"use": self.name, **self.options.model_dump()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
