"""The programmatic API: run a validated recipe on a prior and an observation.

The CLI, the benchmarks and (later) the UI all go through :func:`run_recipe`, so none of them
has sampling logic of its own.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .context import Observation, RunContext
from .errors import GuidestackError, StageError
from .loop_api import RunResult
from .prior import Prior
from .recipe import Recipe
from .registry import Registry
from .sampler import grid_for, run_stages
from .stage import Stage
from .stageset import StageSet


def derive_seed(run_seed: int, key: str) -> int:
    """A per-input seed from the run seed and a stable key (the input's file name), so an image
    gets the same result alone, in a batch, or in a resumed run."""
    # surrogateescape: a file name that is not UTF-8 (os.fsdecode keeps its bytes as lone
    # surrogates) seeds from its raw bytes; valid UTF-8 names are encoded as before
    digest = hashlib.sha256(f"{run_seed}:{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generators(seeds: list[int], device: torch.device | str) -> list[torch.Generator]:
    gens = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(seed))
        gens.append(g)
    return gens


def build_stages(recipe: Recipe, registry: Registry, extra: Sequence[Stage] = ()) -> StageSet:
    """One instance per ``[[stage]]`` of the recipe, then ``extra`` stages, in that order."""
    stages: list[Stage] = []
    for options in recipe.stages:
        cls = registry.stage(options.use)
        assert cls is not None, options.use  # validated by the recipe loader
        stages.append(cls(options))
    return StageSet([*stages, *extra], recipe.source)


def run_recipe(
    recipe: Recipe,
    prior: Prior,
    observation: Observation,
    seeds: list[int],
    registry: Registry,
    *,
    device: torch.device | str | None = None,
    callback: Callable[..., None] | None = None,
    extra_stages: Sequence[Stage] = (),
) -> tuple[RunResult, RunContext]:
    """Restore ``observation`` (a batch) with ``recipe``; one seed per sample.

    The run goes on ``device``, by default the prior's (:attr:`Prior.device`).  ``extra_stages``
    (instances, e.g. a loss given from Python) run after the recipe's stages.
    """
    if len(seeds) != observation.batch_size:
        raise ValueError(
            f"need one seed per sample: {len(seeds)} seeds for {observation.batch_size} images"
        )
    ctx = _context(recipe, prior, observation, seeds, registry, device, callback)
    stages = build_stages(recipe, registry, extra_stages)
    started = time.perf_counter()
    result = run_stages(ctx, stages)
    ctx.report["seconds"] = time.perf_counter() - started
    ctx.report["model_calls"] = ctx.model_calls
    ctx.report["seeds"] = list(seeds)
    return result, ctx


def preflight(
    recipe: Recipe,
    prior: Prior,
    registry: Registry,
    *,
    needs: set[str] = frozenset(),
    device: torch.device | str | None = None,
) -> None:
    """Set every stage of ``recipe`` up once on a blank observation (zeros at the prior's size,
    with a mask and a reference where ``needs`` says), without sampling: whole-run problems such
    as missing weights or a restorer that cannot load are raised once, before any input runs,
    instead of once per input after sampling.  Loaded networks stay cached for the run."""
    size, channels = prior.image_size, prior.channels
    blank = torch.zeros(1, channels, size, size)
    observation = Observation(
        image=blank,
        mask=torch.zeros(1, 1, size, size) if "mask" in needs else None,
        reference=blank.clone() if "reference" in needs else None,
    )
    ctx = _context(recipe, prior, observation, [0], registry, device, None)
    for stage in build_stages(recipe, registry).stages:
        try:
            stage.setup(ctx)
        except GuidestackError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the stage that raised it
            raise StageError(stage.id, "setup", None, None, exc) from exc


def _context(
    recipe: Recipe,
    prior: Prior,
    observation: Observation,
    seeds: list[int],
    registry: Registry,
    device: torch.device | str | None,
    callback: Callable[..., None] | None,
) -> RunContext:
    device = torch.device(device) if device is not None else prior.device
    return RunContext(
        prior=prior,
        observation=observation.to(device),
        timesteps=grid_for(recipe.sampler, prior.num_train_timesteps),
        sampler=recipe.sampler,
        guidance=recipe.guidance,
        generators=make_generators(seeds, device),
        device=device,
        deterministic=recipe.sampler.deterministic,
        callback=callback,
        registry=registry,
    )


def summary(ctx: RunContext) -> dict[str, Any]:
    """JSON-able facts of a finished run."""
    return {
        k: v for k, v in ctx.report.items() if isinstance(v, (int, float, str, list, dict, bool))
    }
