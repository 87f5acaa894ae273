"""Test helpers and pytest fixtures for guidestack plugin authors.

Installed as the ``pytest11`` entry point ``guidestack``, so every test session in an
environment with guidestack gets these fixtures without a ``conftest.py`` (disable with
``pytest -p no:guidestack``)::

    gs_registry   the registry with every installed plugin (yours too, once pip-installed)
    gs_prior      a tiny exact Gaussian face prior, 16x16 RGB (fast on a CPU)
    gs_faces      a batch of two 16x16 faces in [-1, 1] drawn from that prior
    gs_run        run a recipe and get its whole trajectory back (see :func:`run_trajectory`)
    gs_recorder   a fresh :class:`HookRecorder` (which hook of which stage ran, and when)

The same things are plain functions (:func:`tiny_prior`, :func:`face_batch`,
:func:`registry_with`, :func:`run_trajectory`) for use outside fixtures.

This module is imported by every pytest run in such an environment, so it imports nothing
heavy at module level: torch and the engine are imported inside the functions.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from guidestack.engine.context import Observation, RunContext
    from guidestack.engine.loop_api import RunResult
    from guidestack.engine.prior import Prior
    from guidestack.engine.recipe import Recipe
    from guidestack.engine.registry import Registry

__all__ = [
    "HookCall",
    "HookRecorder",
    "StepRecord",
    "Trajectory",
    "face_batch",
    "make_observation",
    "make_recipe",
    "registry_with",
    "run_trajectory",
    "tiny_prior",
]

#: side of the images of :func:`tiny_prior` and :func:`face_batch` by default
TINY_SIZE = 16


# --- a tiny exact prior ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _reduced_face_statistics(size: int) -> tuple[Any, Any, Any, float]:
    """The shipped 64x64 face prior, average-pooled to ``size`` exactly.

    If ``x ~ N(m, V V^T + s2 I)`` and ``D`` averages ``f x f`` blocks, then ``D D^T = I / f^2``
    and ``D x ~ N(D m, (D V)(D V)^T + (s2 / f^2) I)``: again probabilistic PCA, whose components
    are the left singular vectors of ``D V``.  So the small prior is the exact law of the
    down-sampled faces, not an approximation.
    """
    import torch
    import torch.nn.functional as F

    from guidestack.plugins.priors.gaussian import load_shipped_prior

    base = load_shipped_prior(dtype=torch.float64)
    full = base.image_size
    if size < 2 or full % size:
        raise ValueError(f"size must divide {full} (e.g. 8, 16, 32), got {size}")
    f = full // size
    c = base.channels
    k = base.num_components
    mean = F.avg_pool2d(base.mean.view(1, c, full, full), f)[0]
    v = (base.components * base.lam.sqrt()).T.reshape(k, c, full, full)
    v_small = F.avg_pool2d(v, f).reshape(k, -1).T  # [d', k]
    u, sv, _ = torch.linalg.svd(v_small, full_matrices=False)
    return mean, u, sv.square(), float(base.s2) / (f * f)


def tiny_prior(size: int = TINY_SIZE, *, dtype: Any = None) -> Prior:
    """A small exact Gaussian face prior (``kind = "gaussian"``, linear schedule, T = 1000).

    It is the shipped ``gaussian-faces-64`` prior reduced to ``size x size`` (a divisor of
    64) exactly; each call returns a new module, so a test may move or cast it freely.
    """
    import torch

    from guidestack.plugins.priors.gaussian import GaussianPrior

    mean, u, lam, s2 = _reduced_face_statistics(int(size))
    return GaussianPrior(
        mean,
        u,
        lam,
        s2,
        name=f"gaussian-faces-{size}",
        metadata={"source": "guidestack.testing.tiny_prior"},
        dtype=dtype or torch.float32,
    )


def face_batch(n: int = 2, size: int = TINY_SIZE, *, seed: int = 0) -> torch.Tensor:
    """``n`` faces ``[n, 3, size, size]`` in [-1, 1], sampled from :func:`tiny_prior`.

    Face ``i`` depends only on ``seed + i``, so ``face_batch(1, seed=1)`` equals row 1 of
    ``face_batch(2)``.
    """
    import torch

    prior = tiny_prior(size)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return prior.sample(n, generator=gens).clamp(-1.0, 1.0)


def make_observation(
    image: torch.Tensor,
    mask: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
) -> Observation:
    """An :class:`~guidestack.engine.context.Observation` (``mask``: 1 where MISSING)."""
    from guidestack.engine.context import Observation

    return Observation(image=image, mask=mask, reference=reference)


# --- registries and recipes --------------------------------------------------------------------


def registry_with(
    *plugins: Any, entry_points: bool = False, blocked: Iterable[str] = ()
) -> Registry:
    """A fresh registry: the built-ins (and installed plugins if ``entry_points``) plus
    ``plugins``, each a plugin module (anything with a ``register(registry)`` function) or a
    :class:`~guidestack.engine.stage.Stage` subclass.  Lets you test a plugin before it is
    installed, or in isolation from other installed plugins."""
    from guidestack.engine.registry import check_api_version, load_registry
    from guidestack.engine.stage import Stage

    registry = load_registry(blocked=set(blocked), entry_points=entry_points)
    for plugin in plugins:
        if isinstance(plugin, type) and issubclass(plugin, Stage):
            registry.add_stage(plugin)
            continue
        register = getattr(plugin, "register", None)
        if register is None:
            raise TypeError(f"{plugin!r} is neither a Stage subclass nor has a register() hook")
        name = getattr(plugin, "__name__", type(plugin).__name__)
        check_api_version(name, plugin)
        registry.current_plugin = name
        try:
            register(registry=registry)
        finally:
            registry.current_plugin = "<direct>"
        registry.plugins.setdefault(name, {})["module"] = name
    return registry


def make_recipe(
    recipe: Recipe | Mapping[str, Any] | str,
    registry: Registry,
    *,
    prior: Prior | None = None,
    overrides: Iterable[str] = (),
) -> Recipe:
    """A validated recipe from a dict (``description`` optional), a recipe name or ``.toml``
    path, or an already validated recipe; ``per_prior`` tables are applied for ``prior``."""
    from guidestack.engine.recipe import (
        Recipe,
        apply_override,
        apply_per_prior,
        load_recipe,
        validate,
    )

    if isinstance(recipe, Recipe):
        return recipe
    overrides = list(overrides)
    if isinstance(recipe, str):
        name = getattr(prior, "name", None)
        kind = getattr(prior, "kind", None)
        return load_recipe(recipe, registry, overrides, prior_name=name, prior_kind=kind)
    raw = copy.deepcopy({"description": "test recipe", **dict(recipe)})
    if prior is not None:
        raw = apply_per_prior(raw, prior.name, prior.kind, "<test>")
    for assignment in overrides:
        apply_override(raw, assignment, "<test>")
    return validate(raw, registry, "<test>")


# --- hook recording ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HookCall:
    """One hook call: which stage (its recipe id), which hook, and where in the loop."""

    stage: str
    hook: str
    t: int | None = None
    index: int | None = None
    repeat: int | None = None


@dataclass
class HookRecorder:
    """Records every run-level hook call of every stage, in call order.

    ``recorder.instrument(registry)`` returns a copy of the registry whose stage classes are
    recording subclasses (same names, options and hook signatures), so the real engine runs
    unchanged; pass that registry to a run, or pass the recorder to :func:`run_trajectory`.
    """

    calls: list[HookCall] = field(default_factory=list)

    def instrument(self, registry: Registry) -> Registry:
        entries = {kind: dict(table) for kind, table in registry.entries.items()}
        for name, entry in entries.get("stage", {}).items():
            entries["stage"][name] = replace(entry, target=self._recording(entry.obj))
        return replace(
            registry,
            entries=entries,
            recipe_folders=list(registry.recipe_folders),
            plugins={k: dict(v) for k, v in registry.plugins.items()},
        )

    def _recording(self, cls: type) -> type:
        from guidestack.engine.hookspecs import PROJECT, RUN_HOOKS

        namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        for hook in RUN_HOOKS:
            method = getattr(cls, hook, None)
            if method is not None and hasattr(method, PROJECT + "_impl"):
                namespace[hook] = self._wrap(hook, method)
        return type(cls.__name__, (cls,), namespace)

    def _wrap(self, hook: str, function: Callable[..., Any]) -> Callable[..., Any]:
        calls = self.calls

        @functools.wraps(function)  # keeps the signature (pluggy reads it) and the hookimpl mark
        def wrapper(stage: Any, *args: Any, **kwargs: Any) -> Any:
            state = kwargs.get("state")
            calls.append(
                HookCall(
                    stage.id,
                    hook,
                    getattr(state, "t", None),
                    getattr(state, "index", None),
                    getattr(state, "repeat", None),
                )
            )
            return function(stage, *args, **kwargs)

        return wrapper

    def hooks(self, stage: str | None = None) -> list[str]:
        """Hook names in call order, for one stage id or all."""
        return [c.hook for c in self.calls if stage is None or c.stage == stage]

    def stages(self, hook: str) -> list[str]:
        """Stage ids that ran ``hook``, in call order."""
        return [c.stage for c in self.calls if c.hook == hook]

    def count(self, hook: str, stage: str | None = None) -> int:
        return sum(1 for c in self.calls if c.hook == hook and (stage is None or c.stage == stage))

    def clear(self) -> None:
        self.calls.clear()


# --- runs with their trajectory ----------------------------------------------------------------


@dataclass
class StepRecord:
    """A detached copy of one loop step as the engine left it (after ``project``).

    ``pass_index`` counts calls of the loop in the run (more than one only when an ``optimise``
    stage samples several times).  ``x_t`` is the latent after ``update_latent``; ``x0`` the
    (guided, for rule ``x0``) prediction; ``grad`` the summed guidance gradient or ``None``.
    """

    pass_index: int
    index: int
    repeat: int
    t: int
    t_prev: int
    x_t: torch.Tensor
    x0: torch.Tensor
    x_prev: torch.Tensor
    grad: torch.Tensor | None
    losses: dict[str, torch.Tensor]


@dataclass
class Trajectory:
    """What :func:`run_trajectory` returns: the result, the run context and every step."""

    result: RunResult
    ctx: RunContext
    steps: list[StepRecord]

    @property
    def image(self) -> torch.Tensor:
        return self.result.image

    @property
    def ts(self) -> list[int]:
        return [s.t for s in self.steps]

    @property
    def model_calls(self) -> int:
        return self.ctx.model_calls

    def stack(self, name: str) -> torch.Tensor:
        """One field over the steps, ``[steps, N, ...]`` (e.g. ``stack("x0")``)."""
        import torch

        return torch.stack([getattr(s, name) for s in self.steps])

    def loss(self, stage: str) -> torch.Tensor:
        """The per-sample guidance loss of stage ``stage`` at every step it guided, ``[S, N]``."""
        import torch

        values = [s.losses[stage] for s in self.steps if stage in s.losses]
        if not values:
            raise KeyError(f"stage '{stage}' returned no guidance loss in this run")
        return torch.stack(values)


def _copy(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().clone()


def run_trajectory(
    recipe: Recipe | Mapping[str, Any] | str,
    prior: Prior,
    observation: Observation | torch.Tensor,
    *,
    registry: Registry,
    seeds: list[int] | None = None,
    overrides: Iterable[str] = (),
    recorder: HookRecorder | None = None,
) -> Trajectory:
    """Run ``recipe`` with the real engine and keep a copy of every step.

    ``recipe`` is anything :func:`make_recipe` accepts; ``observation`` an Observation or an
    image batch; ``seeds`` default to ``0..N-1``; with ``recorder`` every hook call is recorded.
    Steps are recorded from the engine's ``step`` event, i.e. once per grid step (the last
    repeat when the recipe repeats steps).
    """
    from guidestack.engine.context import Observation
    from guidestack.engine.run import run_recipe

    if not isinstance(observation, Observation):
        observation = make_observation(observation)
    validated = make_recipe(recipe, registry, prior=prior, overrides=overrides)
    run_registry = recorder.instrument(registry) if recorder is not None else registry
    steps: list[StepRecord] = []
    passes = [-1]

    def callback(event: str, **info: Any) -> None:
        if event == "start":
            passes[0] += 1
        elif event == "step":
            s = info["state"]
            steps.append(
                StepRecord(
                    pass_index=max(passes[0], 0),
                    index=s.index,
                    repeat=s.repeat,
                    t=s.t,
                    t_prev=s.t_prev,
                    x_t=_copy(s.x_t),
                    x0=_copy(s.x0),
                    x_prev=_copy(s.x_prev),
                    grad=_copy(s.grad),
                    losses={k: _copy(v) for k, v in s.losses.items()},
                )
            )

    seeds = list(range(observation.batch_size)) if seeds is None else list(seeds)
    result, ctx = run_recipe(validated, prior, observation, seeds, run_registry, callback=callback)
    return Trajectory(result=result, ctx=ctx, steps=steps)


# --- pytest fixtures ---------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> str:
    from guidestack import __version__
    from guidestack.engine.hookspecs import HOOK_API_VERSION

    return (
        f"guidestack {__version__} (hook API {HOOK_API_VERSION}); fixtures from guidestack.testing"
    )


@pytest.fixture(scope="session")
def gs_registry() -> Registry:
    """Built-ins plus every installed plugin (``GUIDESTACK_BLOCK_PLUGINS`` honoured).

    Shared by the session: do not add to it; build your own with :func:`registry_with`.
    Plugins the registry skipped as broken (your own, perhaps) are reported as warnings."""
    import warnings

    from guidestack.engine.registry import load_registry

    registry = load_registry()
    for broken in registry.broken:
        warnings.warn(broken.message(), stacklevel=2)
    return registry


@pytest.fixture
def gs_prior() -> Prior:
    """A fresh 16x16 exact Gaussian face prior (see :func:`tiny_prior`)."""
    return tiny_prior()


@pytest.fixture
def gs_faces() -> torch.Tensor:
    """Two 16x16 faces ``[2, 3, 16, 16]`` in [-1, 1] (see :func:`face_batch`)."""
    return face_batch(2)


@pytest.fixture
def gs_recorder() -> HookRecorder:
    return HookRecorder()


@pytest.fixture
def gs_run(
    gs_registry: Registry, gs_prior: Prior, gs_faces: torch.Tensor
) -> Callable[..., Trajectory]:
    """``gs_run(recipe, observation=gs_faces, *, prior=gs_prior, registry=gs_registry,
    seeds=None, overrides=(), recorder=None)`` -> :class:`Trajectory`."""

    def run(
        recipe: Recipe | Mapping[str, Any] | str,
        observation: Observation | torch.Tensor | None = None,
        *,
        prior: Prior | None = None,
        registry: Registry | None = None,
        **kwargs: Any,
    ) -> Trajectory:
        return run_trajectory(
            recipe,
            prior if prior is not None else gs_prior,
            gs_faces if observation is None else observation,
            registry=registry if registry is not None else gs_registry,
            **kwargs,
        )

    return run
