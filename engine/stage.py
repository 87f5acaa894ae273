"""Stages: configured plugin instances, one per ``[[stage]]`` table of a recipe.

A stage class declares its ``name``, a one-line ``description`` and an ``Options`` pydantic model;
it implements run-level hooks (see :mod:`guidestack.engine.hookspecs`) as methods marked with
``@hookimpl``.  The engine creates one instance per recipe entry and per run.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .config import StrictModel
from .context import RunContext


class StageOptions(StrictModel):
    """Options every stage accepts.  ``use`` and ``id`` are filled from the recipe entry."""

    use: str = Field(description="registered stage name")
    id: str | None = Field(
        None, description="name for --set and error messages (default: the value of use)"
    )


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

    def setup(self, ctx: RunContext) -> None:
        """Prepare for a run (default: nothing)."""

    def active(self, t: int) -> bool:
        """Whether a guidance stage acts at ORIGINAL timestep ``t`` (its own window)."""
        window = getattr(self.options, "window", None)
        return window is None or window[0] < t <= window[1]

    def __repr__(self) -> str:
        return f"<stage {self.id} ({type(self).__name__})>"
