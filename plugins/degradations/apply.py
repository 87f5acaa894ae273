"""Applying a degradation to clean images outside a run: ``NAME[:severity]`` specs, and one call
that binds per-sample generators, prepares masks and returns ``(observation, mask)``.

``guidestack degrade``, ``guidestack bench`` and ``random`` all go through :func:`degrade_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from guidestack.engine.context import Observation
from guidestack.engine.errors import UsageError

from .base import Degradation


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``"jpeg:3"`` -> ``("jpeg", 3)``; ``"jpeg"`` -> ``("jpeg", None)``."""
    name, _, level = spec.strip().partition(":")
    if not name:
        raise UsageError(f"empty degradation in '{spec}' (expected NAME or NAME:SEVERITY)")
    if not level:
        return name, None
    try:
        value = int(level)
    except ValueError:
        raise UsageError(f"severity in '{spec}' must be an integer 1..5") from None
    return name, value


def build_spec(spec: str, registry: Any, **overrides: Any) -> Degradation:
    """The operator for ``NAME[:severity]`` (severity 3 when omitted and the operator has levels,
    unless its class says ``default_severity = None``; else its defaults); ``overrides`` set
    options on top."""
    name, level = parse_spec(spec)
    entry = registry.get("degradation", name)
    if entry is None:
        known = ", ".join(registry.names("degradation"))
        raise UsageError(f"unknown degradation '{name}' (known: {known})")
    cls = entry.obj
    if level is None and cls.severities:
        level = getattr(cls, "default_severity", 3)  # ``random`` draws it instead (None)
    try:
        if level is not None:
            return cls.at_severity(level, registry=registry, **overrides)
        return cls(cls.Options.model_validate(overrides), registry=registry)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UsageError(f"degradation '{spec}': {exc}") from None


def stochastic_parts(op: torch.nn.Module) -> list[Any]:
    from .stochastic import Stochastic

    return [m for m in op.modules() if isinstance(m, Stochastic)]


def degrade_batch(
    op: Degradation,
    x: torch.Tensor,
    generators: Sequence[torch.Generator] | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Degrade clean ``x`` ``[N, C, H, W]``: the observation at ``x``'s size and the mask of
    missing pixels ``[N, 1, H, W]`` (or ``None``).  ``generators`` (one per sample) drive every
    random part; ``mask`` is only for operators that take the user's mask (``mask``)."""
    for part in stochastic_parts(op):
        part.use_generators(generators)
    op.prepare(Observation(image=x, mask=mask))
    y = op.simulate(x)
    hidden = op.mask
    if hidden is not None:
        hidden = hidden.to(device=x.device, dtype=x.dtype)
        if hidden.shape[-2:] != x.shape[-2:]:
            hidden = torch.nn.functional.interpolate(hidden, size=x.shape[-2:], mode="nearest")
        hidden = hidden.expand(x.shape[0], 1, -1, -1).contiguous()
    return y.clamp(-1, 1), hidden
