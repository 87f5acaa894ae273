"""``random``: one operator and severity drawn per image from its generator (mixed benchmarks)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel

from guidestack.io.images import to_square

from .apply import build_spec, degrade_batch
from .options import DEFAULT_POOL as DEFAULT_POOL  # re-exported
from .options import RandomOptions
from .stochastic import Stochastic, child_seed, generator_for


class RandomDegradation(Stochastic):
    """Per sample: draw an operator from ``ops`` and (unless fixed) a severity, then apply it
    with a generator seeded from the sample's stream.  The operator is drawn FIRST, so fixing
    ``severity`` (``random:3``) keeps the same operators for a seed at every level."""

    name = "random"
    description = "Draws one degradation and severity per image from a seed (mixed benchmarks)."
    Options = RandomOptions
    severities = {k: {"severity": k} for k in range(1, 6)}
    #: a bare ``random`` spec draws the severity too (``random:3`` fixes it)
    default_severity = None

    def __init__(self, options: BaseModel | None = None, registry: Any = None):
        super().__init__(options, registry)
        self._registry = registry

    def _reg(self) -> Any:
        if self._registry is None:
            from guidestack.engine.registry import default_registry

            self._registry = default_registry()
        return self._registry

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        ops = self.options.ops
        pick = int(torch.randint(0, len(ops), (1,), generator=generator, device=generator.device))
        level = self.options.severity
        if level is None:
            level = 1 + int(torch.randint(0, 5, (1,), generator=generator, device=generator.device))
        op = build_spec(f"{ops[pick]}:{level}", self._reg())
        y, mask = degrade_batch(op, x, [generator_for(child_seed(generator), generator.device)])
        out: dict[str, Any] = {"image": y, "op": ops[pick], "severity": level}
        if mask is not None:
            out["mask"] = mask
        return out

    def apply(self, x: torch.Tensor, drawn: dict[str, Any]) -> torch.Tensor:
        # the drawn observation was computed at the draw (no gradient through the pick)
        y = drawn["image"].to(x.dtype)
        if y.shape[-2:] != x.shape[-2:]:
            y = to_square(y, int(x.shape[-1]))[0]
        return y

    @property
    def mask(self) -> torch.Tensor | None:
        if not self._drawn or not any("mask" in s for s in self._drawn):
            return None
        masks = []
        for s in self._drawn:
            ref = s["image"]
            masks.append(s.get("mask", torch.zeros_like(ref[:, :1])))
        return torch.cat(masks)

    def picks(self) -> list[dict[str, Any]]:
        """What was drawn per sample (for reports): operator name and severity."""
        return [{"op": s["op"], "severity": s["severity"]} for s in self._drawn or []]
