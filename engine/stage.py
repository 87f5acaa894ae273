"""Stages: configured plugin instances, one per ``[[stage]]`` table of a recipe.

A stage class declares its ``name``, a one-line ``description`` and an ``Options`` pydantic model;
it implements run-level hooks (see :mod:`guidestack.engine.hookspecs`) as methods marked with
``@hookimpl``.  The engine creates one instance per recipe entry and per run.

:func:`hook_problems` is what makes a stage's hooks mean what they say: the engine calls run hooks
itself in recipe order, so anything pluggy would accept but the engine would not honour (ordering
and wrapping options, ``specname``, a marked method that is no run hook, a hook method without the
mark, an argument the loop does not pass) is refused when a stage is registered and when a run's
stages are assembled.
"""

from __future__ import annotations

import difflib
import inspect
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from . import hookspecs
from .config import StrictModel

if TYPE_CHECKING:  # pragma: no cover - the loop's types; stages are declared without torch
    from .context import RunContext

_MARK = hookspecs.PROJECT + "_impl"


class StageOptions(StrictModel):
    """Options every stage accepts.  ``use`` and ``id`` are filled from the recipe entry."""

    use: str = Field(description="registered stage name")
    id: str | None = Field(
        None, description="name for --set and error messages (default: the value of use)"
    )

    def prior_problems(self, prior: Any) -> list[tuple[str, str]]:
        """Problems of these options on ``prior`` as ``(field, message)``, e.g. a timestep beyond
        its schedule.  ``prior`` may be a loaded ``Prior`` or its ``PriorFacts`` (name, kind,
        ``num_train_timesteps``, ``image_size``): the check lives here, on the options model,
        so ``guidestack validate`` runs it without importing the stage (default: none)."""
        return []


class GuidanceOptions(StageOptions):
    """Options of stages that return a guidance loss."""

    weight: float = Field(1.0, ge=0.0, description="multiplies this stage's loss")
    window: tuple[int, int] | None = Field(
        None, description="only guide when lo < t <= hi (ORIGINAL timesteps); default: always"
    )


class Stage:
    """Base class of every stage.

    Subclasses set ``name``, ``description`` and ``Options``; :meth:`setup` runs once per run
    before sampling (load models, precompute targets) and is the place to validate inputs the
    stage needs (e.g. a mask), raising :class:`~guidestack.engine.errors.InputError`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[StageOptions]] = StageOptions
    #: inputs the stage cannot work without ("mask", "reference"), checked before anything runs
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: StageOptions):
        self.options = options

    @property
    def id(self) -> str:
        return self.options.id or self.options.use

    @property
    def weight(self) -> float:
        return float(getattr(self.options, "weight", 1.0))

    @classmethod
    def prior_problems(cls, options: StageOptions, prior: Any) -> list[tuple[str, str]]:
        """Problems of ``options`` on ``prior`` as ``(field, message)``, e.g. a timestep beyond
        its schedule; checked when a recipe meets its prior, before any input runs.  Default:
        the options model's own :meth:`StageOptions.prior_problems`, which is all that is
        checked for a lazily registered stage that is not imported yet."""
        return options.prior_problems(prior)

    def setup(self, ctx: RunContext) -> None:
        """Prepare for a run (default: nothing)."""

    def active(self, t: int) -> bool:
        """Whether a guidance stage acts at ORIGINAL timestep ``t`` (its own window)."""
        window = getattr(self.options, "window", None)
        return window is None or window[0] < t <= window[1]

    def __repr__(self) -> str:
        return f"<stage {self.id} ({type(self).__name__})>"


def _required_args(method: object) -> list[str]:
    """Argument names a hook method needs from the loop (pluggy's rule: without ``self`` and
    without arguments that have defaults)."""
    params = list(inspect.signature(method).parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return [
        p.name
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def hook_problems(cls: type) -> list[str]:
    """Why the run hooks of stage class ``cls`` would not run as written (empty: they would).

    Each message names the class, the method and what to do instead.  Cheap (one pass over the
    class's attributes), so it runs for every run's stages.
    """
    where = f"stage class {cls.__module__}.{cls.__qualname__}"
    problems: list[str] = []
    for attr in dir(cls):
        if attr.startswith("__"):
            continue
        method = getattr(cls, attr, None)
        if not inspect.isroutine(method):
            continue
        opts = getattr(method, _MARK, None)
        if not isinstance(opts, dict):
            if attr in hookspecs.RUN_HOOKS:
                problems.append(
                    f"{where}: method {attr} is named like the run hook {attr} but lacks "
                    "@hookimpl, so it would never be called; decorate it with @hookimpl from "
                    "guidestack.engine.hookspecs"
                )
            continue
        hook = opts.get("specname") or attr
        if hook != attr:
            problems.append(
                f"{where}: method {attr} uses @hookimpl(specname={hook!r}); guidestack finds "
                f"hooks by method name: name the method {hook} instead"
            )
            continue
        if hook in hookspecs.PACKAGE_HOOKS:
            problems.append(
                f"{where}: method {hook} is marked @hookimpl, but {hook} is a package-level hook: "
                "a module-level function of the plugin module, never a stage method"
            )
            continue
        if hook not in hookspecs.RUN_HOOKS:
            close = difflib.get_close_matches(hook, hookspecs.RUN_HOOKS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(
                f"{where}: method {hook} is marked @hookimpl but {hook} is not a run hook{hint}, "
                f"so it would never be called; run hooks: {', '.join(hookspecs.RUN_HOOKS)}"
            )
            continue
        spec = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        unknown = [name for name in _required_args(method) if name not in spec]
        if unknown:
            problems.append(
                f"{where}: hook {hook} takes {', '.join(unknown)}, which the loop does not pass; "
                f"it passes {', '.join(spec)} (take any of them, by these names)"
            )
        for option, advice in hookspecs.REFUSED_OPTIONS.items():
            if opts.get(option):
                problems.append(
                    f"{where}: hook {hook} is marked @hookimpl({option}=True), which guidestack "
                    "refuses: the engine calls each stage's hook itself, in the order of the "
                    f"recipe's [[stage]] tables, so {option} would be ignored. {advice}, and drop "
                    "the option"
                )
    return problems
