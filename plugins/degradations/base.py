"""The degradation plugin type: a forward model ``y = H(x) + n`` as a differentiable module.

SHRED, DPS, DDNM, PGDiff's unmasked region and DifFace's paste-back all take the same operator
(``operator = { use = ... }`` in a recipe), and the benchmarks damage clean faces with it, so one
class serves every solver (deepinv's design: one physics object shared by all of them):

* ``forward(x)`` is ``H`` itself, differentiable, in its own output space (a 4x downsample
  returns a 16x16 image for a 64x64 input, grayscale returns one channel);
* linear operators (``linear = True``) also have ``adjoint(y)`` (``H^T``) and, where one is
  available in closed form, ``pinv(y)`` (``H^+``, the minimum-norm solution of ``H x = y``);
  ``noise_level`` is the standard deviation of ``n`` the solvers assume (option ``noise``);
* ``measurement_side(side)`` is the side of ``y`` the operator reads for images of side
  ``side``: the public API keeps the user's image at that size (a 16x16 photo stays 16x16 for
  a 4x super-resolution on a 64x64 prior) in ``Observation.measurement``;
* ``measure(y, side)`` maps an observation into ``H``'s output space: ``y`` either at the
  prior's size (``image``, as every other stage sees it) or already at the measurement size,
  so ``H(x_true) ~= measure(y)``; :meth:`observed` picks the exact one when the run has it;
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

from guidestack.engine.context import Observation
from guidestack.io.images import to_square

from .options import DegradationOptions
from .options import LinearOptions as LinearOptions  # re-exported: operators import it from here


class Degradation(nn.Module):
    """Base class: subclasses set ``name``, ``description``, ``Options`` and implement ``forward``.

    ``severities`` maps levels 1 (mild) .. 5 (severe) to option values so benchmarks can ask for
    "severity 3" of any operator (:meth:`at_severity`); an operator without a table has no levels.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = DegradationOptions
    severities: ClassVar[dict[int, dict[str, Any]]] = {}
    #: ``H(a x + b z) = a H(x) + b H(z)``: the operator has an adjoint (the generic one by
    #: autograd unless the class gives its own)
    linear: ClassVar[bool] = False

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

    @property
    def noise_level(self) -> float:
        """Standard deviation of the measurement noise (pixel values in [-1, 1]); 0: exact."""
        return float(getattr(self.options, "noise", 0.0))

    def output_side(self, side: int) -> int:
        """The side of ``H(x)`` for square images of side ``side``.  Default: unchanged."""
        return side

    def measurement_side(self, side: int) -> int:
        """The side at which this operator reads the observation for images of side ``side``:
        the public API keeps y at this size.  Default: the images' own side."""
        return side

    def measure(self, y: torch.Tensor, side: int | None = None) -> torch.Tensor:
        """The observation in ``H``'s output space; ``y`` is at the images' side ``side``
        (default: ``y``'s own) or already at :meth:`measurement_side`.  Default: unchanged,
        right for operators whose output has the input's size (blur, masks)."""
        return y

    def observed(self, observation: Observation) -> torch.Tensor:
        """The run's y in ``H``'s output space: from ``observation.measurement`` (y at its own
        size, exact) when the run carries one, else from ``observation.image``."""
        side = int(observation.image.shape[-1])
        y = observation.measurement
        if y is None or y.shape[-1] != self.measurement_side(side):
            y = observation.image
        return self.measure(y, side)

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

    # --- linear algebra -----------------------------------------------------------------

    @property
    def has_adjoint(self) -> bool:
        return self.linear

    @property
    def has_pinv(self) -> bool:
        """Whether :meth:`pinv` is available (in closed form) for these options."""
        return type(self).pinv is not Degradation.pinv

    @property
    def coisometry(self) -> float | None:
        """``c`` if ``H H^T = c I`` (area downsampling, grayscale, identity), else ``None``: then
        ``H^+ = H^T / c``, and a composition whose inner parts are all such operators has the
        pseudo-inverse of its parts in reverse order (see ``compose``)."""
        return None

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``H^T y`` (the vector-Jacobian product of a linear ``H``).  The generic one is exact
        for operators whose output has the input's shape; others give their own."""
        return self.adjoint_at(y, tuple(y.shape))

    def adjoint_at(self, y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``H^T y`` for images of ``shape``, by autograd (exact for a linear ``H``)."""
        if not self.linear:
            raise NotImplementedError(f"degradation '{self.name}' is not linear: no adjoint")
        with torch.enable_grad():
            x = torch.zeros(shape, device=y.device, dtype=y.dtype, requires_grad=True)
            (grad,) = torch.autograd.grad(self(x), x, grad_outputs=y)
        return grad

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``H^+ y``: the minimum-norm ``x`` with ``H x = y`` (least squares when ``y`` is out of
        ``H``'s range).  Differentiable in ``y``."""
        raise NotImplementedError(
            f"degradation '{self.name}' has no pseudo-inverse; the operators with one: "
            "identity, downsample, grayscale, mask, box-mask, pixel-subsample, free-form-mask, "
            "blurs with boundary = 'circular', and compositions of them (see docs/solvers.md)"
        )

    # --- the rest -----------------------------------------------------------------------

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
