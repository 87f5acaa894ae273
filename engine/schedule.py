"""Timestep grids: which ORIGINAL training timesteps a run visits, from noisy to clean.

Every function returns a strictly descending python ``list[int]`` of ORIGINAL indices in
``0..T-1`` (``T = num_train_timesteps``).  The step after the last grid point goes to the data
(``t_prev = -1``), whose ``alpha_bar`` is 1 (see :func:`alpha_bar_at`).  Grids are plain lists so
that recipes, reports and tests can compare them with ``==``.

Conventions shared with the sampler: the first model call of a run is at ``grid[0]``; step ``i``
goes from ``grid[i]`` to ``grid[i + 1]`` (or to ``-1`` after the last point, :func:`step_pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import numpy as np
import torch

from .errors import UsageError

SPACINGS = ("leading", "trailing", "linspace")


def _check_train_steps(num_train_timesteps: int) -> None:
    if num_train_timesteps < 1:
        raise UsageError(f"num_train_timesteps must be at least 1, got {num_train_timesteps}")


def _diffusers_grid(num_steps: int, T: int, spacing: str, steps_offset: int) -> list[int]:
    """The grid of diffusers' ``DDIMScheduler.set_timesteps`` (same numpy operations, same bits).

    * leading:  ``k * (T // n) + steps_offset`` for ``k = n-1 .. 0``
    * trailing: ``round(T - k * T / n) - 1`` for ``k = 0 .. n-1`` (``np.arange`` + half-even round)
    * linspace: ``round(linspace(0, T - 1, n))`` reversed

    except that a negative point is dropped (see below).
    """
    if spacing == "leading":
        ratio = T // num_steps
        grid = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = T / num_steps
        grid = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    else:
        grid = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
    # float overshoot in np.arange gives "trailing" an extra point -1 for some counts (61, 103...
    # of 1000); diffusers keeps it (and then reads alphas_cumprod[-1]), we drop it
    out = [int(t) for t in grid if t >= 0]
    if out[0] > T - 1:
        raise UsageError(f"steps_offset {steps_offset} puts timestep {out[0]} outside 0..{T - 1}")
    return out


def ddim_timesteps(
    num_steps: int,
    num_train_timesteps: int = 1000,
    start: int | None = None,
    spacing: str = "leading",
    *,
    steps_offset: int = 0,
) -> list[int]:
    """The DDIM grid of diffusers' ``DDIMScheduler`` for ``timestep_spacing = spacing``.

    With ``start=None`` the result equals ``DDIMScheduler(num_train_timesteps=T,
    timestep_spacing=spacing, steps_offset=steps_offset).set_timesteps(num_steps).timesteps``
    exactly (``steps_offset`` only affects "leading", as in diffusers), with one fix: for some
    counts (62 of 1..1000 on T=1000, e.g. 61 and 103) diffusers' "trailing" grid gets an extra
    last point ``-1`` from float overshoot in ``np.arange``; it is not a timestep, we drop it.
    Let ``G`` be that grid.

    ``start`` (an ORIGINAL timestep, e.g. DifFace's N = 400) runs the same spacing from
    ``start`` down, so the FIRST model call is at exactly ``t = start`` (DifFace's official code
    starts one grid step late: the ``difface`` stage's ``first_call = "below"``).  Precisely, the grid is::

        start - (G[0] - G[k])   for k = 0, 1, ...   while the value is >= 0

    i.e. the gaps of ``G`` replayed from ``start``.  For "leading" ``G`` is extended below its
    last point with its constant stride ``T // num_steps``, so the grid is ``start, start - r,
    ..., start mod r`` (ending at 0 when ``start`` is on the full grid).  For "trailing" and
    "linspace" (where ``G[0] = T-1``) at most ``num_steps`` points are visited.  When ``start``
    is a point of ``G`` the result is the tail of ``G`` from ``start``; ``start = G[0]`` gives ``G``.
    """
    T = num_train_timesteps
    _check_train_steps(T)
    if spacing not in SPACINGS:
        raise UsageError(
            f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}"
        )
    if not 1 <= num_steps <= T:
        raise UsageError(f"num_steps must be between 1 and {T}, got {num_steps}")
    full = _diffusers_grid(num_steps, T, spacing, steps_offset)
    if start is None:
        return full
    if not 0 <= start <= T - 1:
        raise UsageError(f"start must be an original timestep in 0..{T - 1}, got {start}")
    if spacing == "leading":
        return list(range(start, -1, -(T // num_steps)))
    return [start - (full[0] - g) for g in full if start - (full[0] - g) >= 0]


def _section_steps(size: int, count: int) -> list[int]:
    """``count`` offsets spread over ``0..size-1``, as guided-diffusion spaces one section.

    The offsets are ``round(c_k)`` (Python's half-to-even ``round``) where ``c_k`` is the running
    float sum of ``k`` copies of ``(size - 1) / (count - 1)`` (stride 1 when ``count <= 1``).  The
    sum is accumulated step by step, not computed as ``k * stride``, because that is what
    guided-diffusion does and ties at .5 can round differently otherwise.
    """
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    positions = accumulate([0.0] + [stride] * (count - 1)) if count > 0 else []
    return [round(p) for p in positions]


def respaced_timesteps(
    section_counts: str | int | Sequence[int], num_train_timesteps: int = 1000
) -> list[int]:
    """The timesteps guided-diffusion's ``space_timesteps`` keeps, descending.

    * ``"ddimN"``: the smallest integer stride ``s`` in ``1..T-1`` with ``len(range(0, T, s)) == N``;
      the grid is ``range(0, T, s)`` (e.g. "ddim50" on T=1000 is 0, 20, ..., 980).
    * an int ``N``, a string ``"N"`` or ``"a,b,c"``, or a list of ints: ``T`` is cut into
      ``len(counts)`` consecutive sections (the first ``T % len`` sections one step longer); a
      section of ``size`` steps starting at ``s0`` with count ``c`` keeps ``s0 + round(k * (size -
      1) / (c - 1))``, ``k = 0..c-1`` (see :func:`_section_steps` for the exact float arithmetic),
      so every section keeps its first step and, for ``c > 1``, its last one.  "100" on T=1000 is
      0, 10, 20, 30, 40, 50, 61, 71, ..., 999.
    * ``""`` means no respacing (all ``T`` steps), as guided-diffusion's ``timestep_respacing=""``.
    """
    T = num_train_timesteps
    _check_train_steps(T)
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim") :])
            except ValueError:
                raise UsageError(f"bad respacing {section_counts!r}: expected 'ddimN'") from None
            for stride in range(1, T):
                if len(range(0, T, stride)) == desired:
                    return list(range(0, T, stride))[::-1]
            raise UsageError(f"cannot make exactly {desired} steps of {T} with an integer stride")
        if not text:
            return list(range(T - 1, -1, -1))
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise UsageError(
                f"bad respacing {section_counts!r}: expected 'N', 'a,b,c' or 'ddimN'"
            ) from None
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 0 for c in counts):
        raise UsageError(f"bad respacing {section_counts!r}: counts must be non-negative integers")
    size_per, extra = divmod(T, len(counts))
    kept: set[int] = set()
    section_start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise UsageError(f"cannot divide a section of {size} steps into {count}")
        kept.update(section_start + offset for offset in _section_steps(size, count))
        section_start += size
    if not kept:
        raise UsageError(f"respacing {section_counts!r} keeps no timestep")
    return sorted(kept, reverse=True)


def jump_timesteps(delta: int, num_train_timesteps: int = 1000) -> list[int]:
    """SHRED's skip-step grid ``T-1, T-1-delta, T-1-2*delta, ...`` down to the last value >= 0.

    The last model call is at ``(T - 1) mod delta`` (99 for delta=100, T=1000: 10 calls); the
    step after it goes straight to the data (``t_prev = -1``, alpha_bar 1).  Note BIRD's code
    instead uses diffusers' leading grid ``ddim_timesteps(T // delta)`` = 900, 800, ..., 0.
    """
    T = num_train_timesteps
    _check_train_steps(T)
    if delta < 1:
        raise UsageError(f"jump size delta must be at least 1, got {delta}")
    return list(range(T - 1, -1, -delta))


def window_contains(window: tuple[float, float] | None, t: int) -> bool:
    """Whether ORIGINAL timestep ``t`` lies in ``window = (lo, hi)``: ``lo < t <= hi``.

    Half-open so adjacent windows ``(a, b)`` and ``(b, c)`` never both fire at ``t = b``;
    ``(0.7 * T, T)`` is PGDiff's ``0.7T < t < 1.0T`` for every grid point (they are < T).
    ``None`` means "everywhere".
    """
    if window is None:
        return True
    lo, hi = window
    if lo > hi:
        raise UsageError(f"timestep window {tuple(window)} has its lower bound above its upper")
    return lo < t <= hi


def step_pairs(timesteps: Sequence[int]) -> list[tuple[int, int]]:
    """``(t, t_prev)`` for every step of a grid; the last pair ends at ``t_prev = -1`` (the data)."""
    ts = [int(t) for t in timesteps]
    return list(zip(ts, ts[1:] + [-1], strict=True))


def check_timesteps(timesteps: Sequence[int], num_train_timesteps: int = 1000) -> list[int]:
    """Validate a user-given grid (strictly descending, inside ``0..T-1``) and return it as ints."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise UsageError("a timestep grid needs at least one timestep")
    if any(not 0 <= t < num_train_timesteps for t in ts):
        raise UsageError(f"timesteps must lie in 0..{num_train_timesteps - 1}: {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        raise UsageError(f"timesteps must be strictly descending: {ts}")
    return ts


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: int, final_alpha_cumprod: float = 1.0) -> float:
    """``alpha_bar`` at ORIGINAL timestep ``t`` as a python float; ``t < 0`` (the data) gives
    ``final_alpha_cumprod``.

    1.0 is diffusers' ``set_alpha_to_one=True``; pass ``float(alphas_cumprod[0])`` for
    ``set_alpha_to_one=False``.  The DDPM step treats ``alpha_bar_prev == 1.0`` as "last step, no
    noise", so keep 1.0 for DDPM.
    """
    if t < 0:
        return float(final_alpha_cumprod)
    return float(alphas_cumprod[t])
