"""References from one plugin's options to another registered plugin (``{use = "name", ...}``).

A stage that needs a restorer declares a field of type :class:`RestorerRef`; recipes write
``restorer = { use = "gaussian-blur", sigma = 2.0 }``.  The recipe validator checks the name and
the referenced plugin's options, reporting paths such as ``stage[0].restorer.sigma``.

A stage that needs a measurement operator ``H`` (SHRED, DPS, DDNM, PGDiff's unmasked region,
the known-pixel paste) declares :class:`OperatorRef` (or :class:`PinvOperatorRef` when it needs
``H^+``): recipes write ``operator = { use = "downsample", factor = 4 }``, and
:func:`measurement_side` tells the public API at which size to keep the user's y.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import RecipeError
from .registry import Registry


class PluginRef(BaseModel):
    """``use`` names a registered plugin of kind :attr:`kind`; other keys are its options."""

    model_config = ConfigDict(extra="allow")
    kind: ClassVar[str] = "restorer"

    use: str

    def options_dict(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def check(self, where: str, registry: Registry) -> list[tuple[str, str]]:
        entry = registry.get(self.kind, self.use)
        if entry is None:
            close = difflib.get_close_matches(self.use, registry.names(self.kind), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            return [(f"{where}.use", f"unknown {self.kind} '{self.use}'{hint}")]
        if entry.options is None:
            return []
        try:
            entry.options.model_validate(self.options_dict())
        except ValidationError as exc:
            return [
                (
                    where + "".join(f".{p}" for p in err["loc"]),
                    err["msg"]
                    if err["type"] != "extra_forbidden"
                    else f"unknown field '{err['loc'][-1]}'",
                )
                for err in exc.errors()
            ]
        return []

    def build(self, registry: Registry) -> Any:
        """Instantiate the referenced plugin with its validated options."""
        entry = registry.get(self.kind, self.use)
        if entry is None:  # validated earlier; guard for programmatic use
            raise KeyError(f"unknown {self.kind} '{self.use}'")
        options = entry.options.model_validate(self.options_dict()) if entry.options else None
        return entry.obj(options) if options is not None else entry.obj()


class RestorerRef(PluginRef):
    """A reference to a registered restorer."""

    kind: ClassVar[str] = "restorer"


class DegradationRef(PluginRef):
    """A reference to a registered degradation operator (SHRED's forward model H).

    Degradations nest (``compose`` takes ``ops = [{use = ...}, ...]``), so checking recurses into
    every reference inside the referenced operator's options, reporting paths such as
    ``stage[0].operator.ops[1].factor``.  :meth:`build` hands the registry to the operator so a
    composition can build its parts.
    """

    kind: ClassVar[str] = "degradation"

    def check(self, where: str, registry: Registry) -> list[tuple[str, str]]:
        problems = super().check(where, registry)
        entry = registry.get(self.kind, self.use)
        if problems or entry is None or entry.options is None:
            return problems
        options = entry.options.model_validate(self.options_dict())
        for name in type(options).model_fields:
            value = getattr(options, name)
            if isinstance(value, PluginRef):
                problems += value.check(f"{where}.{name}", registry)
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, PluginRef):
                        problems += item.check(f"{where}.{name}[{i}]", registry)
        return problems

    def build(self, registry: Registry) -> Any:
        entry = registry.get(self.kind, self.use)
        if entry is None:  # validated earlier; guard for programmatic use
            raise KeyError(f"unknown {self.kind} '{self.use}'")
        return entry.obj(entry.options.model_validate(self.options_dict()), registry=registry)

    def capabilities(self, registry: Registry) -> frozenset[str] | None:
        """What the referenced operator can do with these options (``"linear"``, ``"pinv"``,
        ``"coisometry"``), as its options model declares through ``capabilities(registry)``
        without building (importing) the operator; ``None`` when the model declares nothing."""
        entry = registry.get(self.kind, self.use)
        if entry is None or entry.options is None:
            return None
        declare = getattr(entry.options.model_validate(self.options_dict()), "capabilities", None)
        return None if declare is None else declare(registry)


class OperatorRef(DegradationRef):
    """A measurement operator ``H`` for a solver: a registered degradation (the same plugins
    ``guidestack degrade`` and ``bench`` use).  :attr:`needs` lists what the solver uses besides
    ``forward``: ``"linear"`` (an adjoint), ``"pinv"`` (a closed-form pseudo-inverse); checked
    when the recipe is validated, with the path of the reference."""

    needs: ClassVar[tuple[str, ...]] = ()

    def check(self, where: str, registry: Registry) -> list[tuple[str, str]]:
        problems = super().check(where, registry)
        if problems or not self.needs:
            return problems
        can = self.capabilities(registry)
        if can is None:  # the options model does not say: build the operator and ask it
            op = self.build(registry)
            can = frozenset(
                name for name, has in (("linear", op.has_adjoint), ("pinv", op.has_pinv)) if has
            )
        if "linear" in self.needs and "linear" not in can:
            problems.append((f"{where}.use", f"operator '{self.use}' is not linear"))
        if "pinv" in self.needs and "pinv" not in can:
            problems.append(
                (
                    f"{where}.use",
                    f"operator '{self.use}' has no closed-form pseudo-inverse H^+ with these "
                    "options (docs/solvers.md lists the operators that have one)",
                )
            )
        return problems


class PinvOperatorRef(OperatorRef):
    """An operator whose pseudo-inverse ``H^+`` the solver uses (DDNM's projection)."""

    needs: ClassVar[tuple[str, ...]] = ("linear", "pinv")


def operator_fields(options: BaseModel) -> list[tuple[str, DegradationRef]]:
    """The operator references among a stage's options, as ``(field, reference)``."""
    return [
        (name, value)
        for name in type(options).model_fields
        if isinstance(value := getattr(options, name), DegradationRef)
    ]


def measurement_side(
    stages: Sequence[BaseModel], registry: Registry, side: int, source: str = "<recipe>"
) -> int | None:
    """The side at which the stages' operators read the observation, when it differs from the
    images' ``side`` (4x super-resolution on a 64x64 prior: 16), else ``None``: the public API
    then keeps the user's y at that size, unresized, in ``Observation.measurement``.  Operators
    that read y at different sizes in one recipe are a :class:`RecipeError`."""
    wanted: dict[str, int] = {}
    for i, options in enumerate(stages):
        for name, ref in operator_fields(options):
            value = ref.build(registry).measurement_side(side)
            if value != side:
                wanted[f"stage[{i}].{name}"] = value
    if len(set(wanted.values())) > 1:
        listed = ", ".join(f"{where} reads {value}x{value}" for where, value in wanted.items())
        raise RecipeError(source, [("stage", f"operators read y at different sizes: {listed}")])
    return next(iter(wanted.values()), None)
