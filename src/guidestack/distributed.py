"""Many inputs, many processes: which share of a run this process takes, on which device.

Launchers (``torchrun``, ``accelerate launch``, SLURM's ``srun``) start one process per device
and tell each its place through environment variables; :func:`world` reads them (or an already
initialised ``torch.distributed`` process group).  :func:`plan` splits the inputs into one
deterministic share per process, balanced by an estimate of their cost; :func:`run_distributed`
runs this process's share (and, with a ``queue`` folder all processes see, takes over the work
of processes that are behind or died).  Seeds derive from the input names, so every output is
the same whatever the number of processes (docs/distributed.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from guidestack.engine.errors import GuidestackError, UsageError
from guidestack.io.claims import WorkQueue

T = TypeVar("T")

__all__ = ["World", "plan", "run_distributed", "shard", "visiting_order", "world"]


@dataclass(frozen=True)
class World:
    """This process's place in a launch: ``rank`` of ``size`` processes, ``local_rank`` on its
    node; ``launcher`` says where that came from (``torchrun``, ``slurm``,
    ``torch.distributed``, or ``none`` for a plain single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = "none"

    @classmethod
    def current(cls) -> World:
        """This process's place (:func:`world`)."""
        return world()

    @property
    def device(self) -> torch.device:
        """The device this process should use: ``cuda:LOCAL_RANK`` where CUDA exists, else the
        best device available (``mps``, ``cpu``)."""
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise UsageError(
                    f"process {self.rank} has LOCAL_RANK {self.local_rank} but this node has "
                    f"{count} GPU(s): start at most {count} processes per node, or choose the "
                    "device with --device"
                )
            return torch.device("cuda", self.local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise UsageError(f"environment variable {key}={env[key]!r} is not an integer") from None


def world(environ: Mapping[str, str] | None = None) -> World:
    """This process's :class:`World`, from an initialised ``torch.distributed`` process group,
    else the launcher's environment: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun,
    ``accelerate launch``, ``python -m torch.distributed.run``), else ``SLURM_PROCID``/
    ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``)/``SLURM_LOCALID`` inside an ``srun`` step;
    otherwise a single process."""
    env = os.environ if environ is None else environ
    local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else None
    if environ is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        found = World(rank, size, rank if local is None else local, "torch.distributed")
    elif "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
        rank = _int(env, "RANK")
        found = World(rank, _int(env, "WORLD_SIZE"), rank if local is None else local, launcher)
    elif "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        size_key = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        if size_key not in env:
            return World()
        rank = _int(env, "SLURM_PROCID")
        found = World(
            rank,
            _int(env, size_key),
            _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            "slurm",
        )
    else:
        return World()
    if found.size < 1 or not 0 <= found.rank < found.size or found.local_rank < 0:
        raise UsageError(
            f"the launcher's environment gives rank {found.rank} of {found.size} processes "
            f"(local rank {found.local_rank}): not a valid place"
        )
    return found


_detect = world  # for functions whose ``world`` argument hides this one


def plan(items: Sequence[T], size: int, cost: Callable[[T], float] | None = None) -> list[list[T]]:
    """``items`` split into ``size`` deterministic shares of about equal total cost.

    Longest first: in order of decreasing ``cost`` (given order among equals), each item goes to
    the share with the least total so far (the lowest rank among equals).  Without ``cost``,
    that is ``items[rank::size]``.  Each share is in the order it should run.
    """
    if size < 1:
        raise UsageError(f"cannot split a run between {size} processes")
    costs = [1.0 if cost is None else float(cost(item)) for item in items]
    order = sorted(range(len(items)), key=lambda i: -costs[i])
    shares: list[list[T]] = [[] for _ in range(size)]
    totals = [0.0] * size
    for i in order:
        rank = min(range(size), key=lambda r: (totals[r], r))
        shares[rank].append(items[i])
        totals[rank] += costs[i]
    return shares


def shard(
    items: Sequence[T], world: World | None = None, cost: Callable[[T], float] | None = None
) -> list[T]:
    """This process's share of ``items`` (see :func:`plan`): what
    ``accelerate``'s ``split_between_processes`` gives, balanced by ``cost``."""
    place = world or _detect()
    return plan(items, place.size, cost)[place.rank]


def visiting_order(shares: Sequence[Sequence[T]], rank: int) -> list[T]:
    """The order in which process ``rank`` claims inputs from a shared queue: its own share
    first, then the others' from their ends (their cheapest inputs, which their owners reach
    last), taking one from each in turn."""
    others = [list(shares[(rank + k) % len(shares)]) for k in range(1, len(shares))]
    stolen = []
    for depth in range(max((len(s) for s in others), default=0)):
        stolen += [s[-1 - depth] for s in others if depth < len(s)]
    return [*shares[rank], *stolen]


def _per_input(value: Any, count: int, what: str) -> list[Any]:
    if isinstance(value, list | tuple):
        if len(value) != count:
            raise UsageError(f"{len(value)} {what}s for {count} inputs: give one per input, or one")
        return list(value)
    return [value] * count


def _name(obj: Any, index: int) -> str:
    return Path(obj).stem if isinstance(obj, str | Path) else f"input{index:02d}"


def run_distributed(
    recipe: Any,
    prior: Any,
    images: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    mask: Any = None,
    reference: Any = None,
    queue: str | Path | None = None,
    world: World | None = None,
    batch_size: int = 1,
    cost: Callable[[Any], float] | None = None,
    errors: list[tuple[str, GuidestackError]] | None = None,
    **options: Any,
) -> Iterator[Any]:
    """Run ``recipe`` on this process's share of ``images``, yielding a :class:`Result` per
    input as it finishes (save it in the loop).

    Every process of the launch calls it with the same arguments.  Each input's seed derives
    from ``seed`` and its name (the file stem) as in :func:`guidestack.run`, so a result is the
    same whatever the number of processes.  Without ``queue`` each process runs its share of
    :func:`plan` (balanced by ``cost(image)``).  With ``queue``, a folder every process sees,
    inputs are claimed through files there: a process that finished its share takes inputs from
    the others' ends, an input whose process died is run again by another, and an input whose
    result was consumed (the loop body after its ``yield`` ran) is never run again with the same
    folder.  ``errors``: a list that collects ``(name, error)`` for inputs that failed while the
    others go on (without it, the first failure raises).  ``options`` go to
    :func:`guidestack.run` (``device``, ``trajectory``, ``faces``, ``progress``, ``registry``...).
    """
    from guidestack import api

    if batch_size < 1:
        raise UsageError("batch_size must be at least 1")
    images = list(images)
    count = len(images)
    names = list(names) if names is not None else [_name(x, i) for i, x in enumerate(images)]
    if len(names) != count or len(set(names)) != count:
        raise UsageError(f"need {count} distinct names for {count} inputs, got {names}")
    if seeds is not None and len(seeds) != count:
        raise UsageError(f"need one seed per input: {len(seeds)} seeds for {count} inputs")
    seed_of = {
        n: int(seeds[i]) if seeds is not None else api.derive_seed(seed, n)
        for i, n in enumerate(names)
    }
    masks, refs = _per_input(mask, count, "mask"), _per_input(reference, count, "reference")
    index = {n: i for i, n in enumerate(names)}
    place = world or _detect()
    weight = None if cost is None else (lambda n: cost(images[index[n]]))
    shares = plan(names, place.size, weight)

    def run(batch: list[str]) -> list[Any]:
        ids = [index[n] for n in batch]
        return api.run(
            recipe,
            prior,
            [images[i] for i in ids],
            mask=None if all(m is None for m in masks) else [masks[i] for i in ids],
            reference=None if all(r is None for r in refs) else [refs[i] for i in ids],
            seeds=[seed_of[n] for n in batch],
            names=batch,
            **options,
        )

    def attempt(batch: list[str]) -> list[Any]:
        try:
            return run(batch)
        except GuidestackError as exc:
            if errors is None:
                raise
            errors.extend((n, exc) for n in batch)
            return [None] * len(batch)

    if queue is None:
        mine = shares[place.rank]
        for start in range(0, len(mine), batch_size):
            yield from (r for r in attempt(mine[start : start + batch_size]) if r is not None)
        return
    work = WorkQueue(queue, visiting_order(shares, place.rank))
    try:
        while claims := work.claim(batch_size):
            dead = [c for c in claims if c.given_up]
            for claim in dead:
                failure = GuidestackError(
                    f"input {claim.name}: the process running it died {claim.attempt - 1} "
                    "times (killed, or out of memory?); not tried again"
                )
                if errors is None:
                    raise failure
                errors.append((claim.name, failure))
                work.finish(claim, "failed")
            live = [c for c in claims if not c.given_up]
            if not live:
                continue
            results = attempt([c.name for c in live])
            for claim, result in zip(live, results, strict=True):
                if result is not None:
                    yield result
                work.finish(claim, "failed" if result is None else "done")
    finally:
        work.release()
