"""The small dataclasses hooks receive: what the user gave, the run, and one step.

Hooks change a run only through the named fields of these objects, never through globals, so a
reader can see every way a stage can influence sampling by reading this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .prior import PriorOutput

if TYPE_CHECKING:  # pragma: no cover
    from .config import GuidanceConfig, SamplerConfig
    from .prior import Prior


@dataclass
class Observation:
    """What the user gives, already at the prior's resolution, NCHW in [-1, 1].

    ``mask`` is ``[N, 1, H, W]`` with 1 where pixels are MISSING (or damaged), 0 where known.
    ``reference`` holds reference images (e.g. for identity), ``[N, C, H, W]``.
    ``meta`` is per-input metadata (file names, original sizes...), one dict per sample.
    ``measurement`` is y at the size the recipe's operator reads it, when that differs from the
    prior's (super-resolution: a 16x16 photo stays 16x16, never resampled); ``image`` then holds
    it resized to the prior's size for the stages that want a picture.
    """

    image: torch.Tensor
    mask: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    meta: list[dict[str, Any]] = field(default_factory=list)
    measurement: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Observation:
        def move(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device=device, dtype=dtype or x.dtype)

        return Observation(
            move(self.image),
            move(self.mask),
            move(self.reference),
            list(self.meta),
            move(self.measurement),
        )

    def select(self, index: slice | list[int]) -> Observation:
        """The sub-batch ``index`` (used to run samples one by one and to split batches)."""
        idx = list(range(self.batch_size))[index] if isinstance(index, slice) else list(index)

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[idx]

        meta = [self.meta[i] for i in idx] if self.meta else []
        return Observation(
            pick(self.image), pick(self.mask), pick(self.reference), meta, pick(self.measurement)
        )


@dataclass
class InitialLatent:
    """Where the reverse process starts: ``x`` at ORIGINAL timestep ``t`` (``t`` = T-1 for noise)."""

    x: torch.Tensor
    t: int


@dataclass(slots=True)
class StepState:
    """One visit of the loop at timestep ``t`` going to ``t_prev`` (``-1`` for the last step).

    Filled progressively: ``x_t`` on entry (``update_latent`` may replace it); ``eps``, ``x0``,
    ``output`` after the denoiser call; ``x0_guided`` after guidance when the rule acts on x0;
    ``mean``/``std``/``noise`` from the step rule; ``x_prev`` after the (guided) update, which
    ``project`` may change.  ``index`` is the position in the grid, ``repeat`` the repeat number.
    """

    t: int
    t_prev: int
    index: int
    x_t: torch.Tensor
    repeat: int = 0
    eps: torch.Tensor | None = None
    x0: torch.Tensor | None = None
    output: PriorOutput | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    x_prev: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RunContext:
    """Everything a run shares between hooks.

    ``generators`` holds one ``torch.Generator`` per sample so results never depend on batch
    size; draw noise with :meth:`randn_like`.  ``cache`` is free for stages (keys should start with
    the stage id).  ``model_calls`` counts denoiser evaluations (for the run report).

    ``deterministic`` (the recipe's ``sampler.deterministic``) asks for a batch of N that is
    bit-identical to N single runs: the denoiser, and the networks and reductions stages run, then
    work one sample at a time.  By default they run batched, which is faster and equal to single runs up
    to float rounding (batched CPU kernels sum in a different order).
    """

    prior: Prior
    observation: Observation
    timesteps: list[int]
    sampler: SamplerConfig
    guidance: GuidanceConfig
    generators: list[torch.Generator]
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    deterministic: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    #: the plugin registry (stages use it to build referenced restorers)
    registry: Any = None
    model_calls: int = 0
    #: facts for run.json; per-sample values are lists with one entry per sample (the CLI
    #: gives each input its own entry)
    report: dict[str, Any] = field(default_factory=dict)
    #: called as ``callback(event, **info)`` for progress bars and trajectory recording
    callback: Callable[..., None] | None = None
    #: replaces the per-sample generators when set: ``noise_source(shape)`` returns the next
    #: standard normal batch of ``shape``.  For replaying noise recorded elsewhere (the golden
    #: tests replay the CODE notebook's); a stage sets it in ``setup``.
    noise_source: Callable[[tuple[int, ...]], torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.observation.batch_size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        p = self.prior
        return (self.batch_size, p.channels, p.image_size, p.image_size)

    def abar(self, t: int) -> float:
        """alphas_cumprod at ORIGINAL timestep ``t``; ``t < 0`` means the clean data (1.0)."""
        return 1.0 if t < 0 else float(self.prior.alphas_cumprod[t])

    def randn(self, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Standard normal noise of ``shape`` (default: the image batch), one generator per sample."""
        shape = shape or self.shape
        if self.noise_source is not None:
            return self.noise_source(tuple(shape)).to(device=self.device, dtype=self.dtype)
        per_sample = shape[1:]
        return torch.stack(
            [
                torch.randn(per_sample, generator=g, device=g.device, dtype=torch.float32)
                for g in self.generators
            ]
        ).to(device=self.device, dtype=self.dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(tuple(x.shape))

    def denoise(self, x_t: torch.Tensor, t: int) -> PriorOutput:
        """One counted call of the prior at ORIGINAL timestep ``t`` (the same for the batch).

        In ``deterministic`` mode the prior sees one sample at a time (a fresh copy, so its
        memory alignment is that of a single run) unless it declares ``batch_invariant = True``,
        i.e. that it already computes each sample on its own.
        """
        n = x_t.shape[0]
        self.model_calls += 1
        if n > 1 and self.deterministic and not getattr(self.prior, "batch_invariant", False):
            ts = torch.full((1,), int(t), device=x_t.device, dtype=torch.long)
            outs = [self.prior(x_t[i : i + 1].clone(), ts) for i in range(n)]
            values = [o.variance_values for o in outs]
            return PriorOutput(
                eps=torch.cat([o.eps for o in outs]),
                variance_values=None if values[0] is None else torch.cat(values),
            )
        ts = torch.full((n,), int(t), device=x_t.device, dtype=torch.long)
        return self.prior(x_t, ts)

    def emit(self, event: str, **info: Any) -> None:
        if self.callback is not None:
            self.callback(event, **info)
