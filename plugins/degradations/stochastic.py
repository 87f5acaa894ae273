"""Degradations with random content (noise, random masks, elastic fields) and how seeds flow.

The random part is DRAWN once per sample and then held, so ``forward`` is a fixed, differentiable
map (SHRED can optimise through it, repeated calls agree) and a batch equals single runs:

* ``use_generators(generators)`` hands the operator one ``torch.Generator`` per sample (the
  project's convention; ``guidestack degrade`` and ``bench`` derive them from ``--seed`` and the
  file name);
* without generators, sample ``i`` uses a generator seeded with ``options.seed`` (so a recipe's
  operator is reproducible too);
* the draw happens at the first ``forward`` for a given input shape and is cached; a new shape
  (e.g. inside a composition) draws again from the same generators.

``simulate(x, generators)`` is the one-call form: bind the generators, then the base simulate.
Operators that hide pixels (lines, random pixels, free-form masks, scratches) expose the drawn
:attr:`mask` (1 = missing/damaged), which ``degrade`` writes as ``NAME_mask.png`` and ``bench``
gives to recipes that need a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Degradation
from .options import StochasticOptions


def generator_for(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def child_seed(generator: torch.Generator) -> int:
    """A seed drawn from ``generator`` (to hand a sub-operator its own stream)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


class Stochastic(Degradation):
    """Base of random operators: subclasses implement ``draw(x, generator)`` for ONE sample
    ``[1, C, H, W]`` (returning a dict of tensors on ``x``'s device) and ``apply(x, drawn)``."""

    Options = StochasticOptions

    def __init__(self, options=None, registry: Any = None):
        super().__init__(options, registry)
        self._generators: list[torch.Generator] | None = None
        self._drawn: list[dict[str, torch.Tensor]] | None = None
        self._drawn_shape: tuple[int, ...] | None = None

    def use_generators(self, generators: Sequence[torch.Generator] | None) -> Stochastic:
        """Bind one generator per sample (or ``None`` for ``options.seed``); forgets old draws."""
        self._generators = None if generators is None else list(generators)
        self._drawn = None
        self._drawn_shape = None
        return self

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def apply(self, x: torch.Tensor, drawn: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def drawn(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The per-sample random state for inputs shaped like ``x`` (drawn on first use)."""
        shape = tuple(x.shape)
        if self._drawn is None or self._drawn_shape != shape:
            n = x.shape[0]
            gens = self._generators
            if gens is None:
                gens = [generator_for(self.options.seed) for _ in range(n)]
            if len(gens) != n:
                raise ValueError(
                    f"degradation '{self.name}': {len(gens)} generators for {n} images"
                )
            with torch.no_grad():
                self._drawn = [self.draw(x[i : i + 1].detach(), gens[i]) for i in range(n)]
            self._drawn_shape = shape
        return self._drawn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = self.drawn(x)
        return torch.cat([self.apply(x[i : i + 1], s) for i, s in enumerate(states)])

    def simulate(
        self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        if generators is not None:
            self.use_generators(generators)
        return super().simulate(x)

    @property
    def mask(self) -> torch.Tensor | None:
        if not self._drawn or "mask" not in self._drawn[0]:
            return None
        return torch.cat([s["mask"] for s in self._drawn])


def uniform(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, moved to ``like``'s device/dtype
    (so results do not depend on where the image lives)."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return u.to(device=like.device, dtype=like.dtype)


def normal(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    n = torch.randn(tuple(shape), generator=generator, device=generator.device)
    return n.to(device=like.device, dtype=like.dtype)


def paint(x: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """``x`` with ``colour`` (broadcastable to ``x``) where ``mask`` is 1."""
    return x * (1.0 - mask) + colour * mask
