"""Guidance losses written as plain functions, without a plugin package.

Two ways, both ending as ordinary guidance stages (so the loop's update rule, weights, windows,
NaN checks and reports apply to them as to every other stage):

* :func:`loss_stage` wraps a callable ``loss(x0, obs) -> [N]`` for one run
  (``guidestack.run(..., loss=fn)``);
* :func:`guidance` turns a function into a registered stage class whose options model is built
  from the function's keyword-only parameters, so recipes can ``use`` it by name and ``--set``
  its options::

      @guidance("symmetry", description="pull x0 towards its mirror image")
      def symmetry(x0, obs, *, strength: float = 1.0):
          return strength * (x0 - x0.flip(-1)).pow(2).flatten(1).sum(1)
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, create_model

from .context import Observation, RunContext, StepState
from .hookspecs import hookimpl
from .stage import GuidanceOptions, Stage

#: a guidance loss: ``x0`` (detached, requires grad) and the observation -> per-sample ``[N]``
LossFn = Callable[..., torch.Tensor]

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
#: parameters the engine passes by name when the function declares them
_CONTEXT_ARGS = ("t", "ctx", "state")


def _context_args(fn: Callable[..., Any]) -> tuple[str, ...]:
    params = inspect.signature(fn).parameters
    return tuple(name for name in _CONTEXT_ARGS if name in params)


def _call(
    fn: LossFn, wants: tuple[str, ...], ctx: RunContext, state: StepState, options: dict[str, Any]
) -> torch.Tensor:
    extra = {name: {"t": state.t, "ctx": ctx, "state": state}[name] for name in wants}
    return fn(state.x0, ctx.observation, **extra, **options)


class FunctionLoss(Stage):
    """A guidance stage around a callable given to one run (not registered, not in recipes)."""

    name = "function-loss"
    description = "a guidance loss given as a Python callable"
    Options = GuidanceOptions

    def __init__(self, fn: LossFn, *, stage_id: str | None = None, weight: float = 1.0):
        label = stage_id or getattr(fn, "__name__", "loss")
        super().__init__(GuidanceOptions(use=self.name, id=label, weight=weight))
        self.fn = fn
        self._wants = _context_args(fn)

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor | None:
        return _call(self.fn, self._wants, ctx, state, {})


def loss_stage(fn: LossFn | Stage, index: int = 0) -> Stage:
    """A stage instance for a loss given to one run (stages pass through unchanged)."""
    if isinstance(fn, Stage):
        return fn
    if not callable(fn):
        raise TypeError(f"a loss must be callable as loss(x0, obs), got {type(fn).__name__}")
    name = getattr(fn, "__name__", "loss")
    if name == "<lambda>" or not name.isidentifier():
        name = "loss"
    return FunctionLoss(fn, stage_id=f"{name}" if index == 0 else f"{name}-{index}")


def _options_model(fn: Callable[..., Any], class_name: str, weight: float) -> type[GuidanceOptions]:
    """A pydantic model of ``fn``'s keyword-only parameters (type hints and defaults kept), on
    top of the options every guidance stage has (``weight`` defaulting to ``weight``)."""
    base = GuidanceOptions.model_fields["weight"]
    fields: dict[str, Any] = {
        "weight": (float, Field(weight, ge=0.0, description=base.description))
    }
    hints = inspect.get_annotations(fn, eval_str=True)
    for param in inspect.signature(fn).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if param.name in GuidanceOptions.model_fields:
            raise TypeError(
                f"{fn.__name__}: option '{param.name}' clashes with an option every guidance "
                f"stage has ({', '.join(GuidanceOptions.model_fields)})"
            )
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    return create_model(class_name, __base__=GuidanceOptions, **fields)


def guidance(
    name: str, *, description: str = "", weight: float = 1.0
) -> Callable[[LossFn], type[Stage]]:
    """Decorator: a guidance stage class named ``name`` from ``fn(x0, obs, *, option=default)``.

    ``fn`` returns a per-sample loss ``[N]``; it may also declare ``t``, ``ctx`` or ``state`` to
    receive the timestep, the run context or the step state.  Keyword-only parameters become
    the stage's options (validated, listed by ``guidestack explain``); ``weight`` is the default
    of the ``weight`` option every guidance stage has.  Register the class with
    ``guidestack.register(cls)`` or, in a plugin package, ``registry.add_stage(cls)``.
    """
    if not _NAME.match(name):
        raise ValueError(
            f"stage name {name!r}: use lowercase letters, digits and dashes, e.g. 'my-loss'"
        )

    def wrap(fn: LossFn) -> type[Stage]:
        class_name = "".join(part.capitalize() for part in name.split("-"))
        options = _options_model(fn, f"{class_name}Options", weight)
        wants = _context_args(fn)
        own = [n for n in options.model_fields if n not in GuidanceOptions.model_fields]

        @hookimpl
        def guidance_loss(self: Stage, ctx: RunContext, state: StepState) -> torch.Tensor:
            values = {n: getattr(self.options, n) for n in own}
            return _call(fn, wants, ctx, state, values)

        doc = inspect.getdoc(fn) or description
        cls = type(
            class_name,
            (Stage,),
            {
                "__module__": fn.__module__,
                "__qualname__": class_name,
                "__doc__": doc,
                "name": name,
                "description": description or (doc.splitlines()[0] if doc else name),
                "Options": options,
                "guidance_loss": guidance_loss,
                "function": staticmethod(fn),
            },
        )
        return cls

    return wrap


__all__ = ["FunctionLoss", "LossFn", "Observation", "guidance", "loss_stage"]
