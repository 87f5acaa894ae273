"""The light half of the public API: the registry, recipes and what is installed, without torch.

``guidestack --help``, ``recipes``, ``plugins`` and ``validate`` (and a program that only reads
recipes) use these; they import no torch, diffusers or gradio because the registry imports a
plugin's code only when it is used (docs/architecture.md, "Lazy registration").  Every name here
is also :mod:`guidestack.api`'s and the ``guidestack`` package's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guidestack.engine import catalog
from guidestack.engine.catalog import KINDS
from guidestack.engine.errors import UsageError
from guidestack.engine.hookspecs import HOOK_API_VERSION
from guidestack.engine.recipe import Overrides, Recipe, recipe_requirements
from guidestack.engine.recipe import load_recipe as _load_recipe
from guidestack.engine.registry import PriorFacts, Registry, check_api_version, default_registry
from guidestack.engine.stage import Stage

if TYPE_CHECKING:  # pragma: no cover
    from guidestack.engine.prior import Prior

__all__ = [
    "HOOK_API_VERSION",
    "KINDS",
    "explain",
    "list_plugins",
    "list_recipes",
    "load_recipe",
    "prior_facts",
    "register",
    "registry",
    "requirements",
    "run_hooks",
]


# --- the registry ------------------------------------------------------------------------------


def registry() -> Registry:
    """The process-wide registry: built-in plugins, installed plugin packages, and what
    :func:`register` added."""
    return default_registry()


def _registry(given: Registry | None) -> Registry:
    return given if given is not None else default_registry()


def register(*things: Any, registry: Registry | None = None) -> None:
    """Add stage classes (e.g. made with :func:`guidestack.guidance`) or plugin modules (anything
    with a ``register(registry)`` function) to the registry, as an installed plugin would."""
    reg = _registry(registry)
    for thing in things:
        if isinstance(thing, type) and issubclass(thing, Stage):
            owner = getattr(thing, "__module__", None) or "<python>"
            previous, reg.current_plugin = reg.current_plugin, owner
            try:
                reg.add_stage(thing)
            finally:
                reg.current_plugin = previous
            continue
        hook = getattr(thing, "register", None)
        if hook is None:
            raise TypeError(
                f"cannot register {thing!r}: give a Stage subclass or a module with register()"
            )
        name = getattr(thing, "__name__", type(thing).__name__)
        check_api_version(name, thing)
        previous, reg.current_plugin = reg.current_plugin, name
        try:
            hook(registry=reg)
        finally:
            reg.current_plugin = previous
        reg.plugins.setdefault(name, {})["module"] = name


def list_recipes(*, registry: Registry | None = None) -> list[dict[str, Any]]:
    """Every named recipe: ``name``, ``plugin``, ``description``, ``stages``."""
    return catalog.recipes_listing(_registry(registry))


def list_plugins(*, registry: Registry | None = None) -> list[dict[str, Any]]:
    """Every installed plugin and what it registered, with options schemas."""
    return catalog.plugins_listing(_registry(registry))


def explain(
    name: str, kind: str | None = None, *, registry: Registry | None = None
) -> list[dict[str, Any]]:
    """Everything registered as ``name``: description, hooks, options, recipes using it."""
    return catalog.explain(_registry(registry), name, kind)


def run_hooks() -> list[dict[str, Any]]:
    """The hooks a stage can implement, in the order the loop calls them (docs/hooks.md)."""
    return catalog.run_hooks()


def load_recipe(
    ref: str | Path | Mapping[str, Any] | Recipe,
    *,
    set: Overrides | None = None,  # noqa: A002 - the CLI's --set, by name
    prior: Prior | None = None,
    registry: Registry | None = None,
) -> Recipe:
    """A validated recipe from a name, a ``.toml`` path, TOML text or a dict.

    ``set`` overrides values as ``--set`` does: ``{"guidance.scale": 0.3}`` or
    ``["stage.lightness.weight=2"]``.  ``per_prior`` tables are applied for ``prior`` if given,
    else when the recipe runs (``run`` specialises it for the prior it gets).  A dict or text
    without a ``description`` gets one saying where it came from.
    """
    reg = _registry(registry)
    if isinstance(ref, Recipe):
        if set:
            raise UsageError("apply overrides when loading the recipe, not to a loaded Recipe")
        return ref if prior is None else ref.for_prior(prior, reg)
    source: Any = ref
    if isinstance(ref, Mapping) and "description" not in ref:
        source = {"description": "a recipe given as a Python dict", **ref}
    elif isinstance(ref, Path):
        source = str(ref)
    recipe = _load_recipe(source, reg, set)
    return recipe if prior is None else recipe.for_prior(prior, reg)


def requirements(recipe: Recipe, *, registry: Registry | None = None) -> set[str]:
    """Inputs ``recipe`` cannot run without (``"mask"``, ``"reference"``), to check before any
    work starts."""
    return recipe_requirements(recipe, _registry(registry))


def prior_facts(name: str, *, registry: Registry | None = None) -> PriorFacts | None:
    """What recipe checks need of the registered prior ``name`` (name, kind, schedule length,
    image size), without loading it; ``None`` if it is not registered or declares no facts
    (then load it).  Raises ``PriorUnavailable`` where loading it would."""
    return _registry(registry).prior_facts(name)
