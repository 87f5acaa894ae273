"""The stages of one run, registered on a fresh pluggy manager and called in recipe order.

pluggy validates each stage's hook implementations against the hookspecs (names and
arguments) when it is registered.  The engine then calls implementations itself, in recipe
order, so that (a) the order users write is the order that runs, and (b) a failure is reported
with the stage that raised it and the step it was at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pluggy

from . import hookspecs
from .errors import GuidestackError, RecipeError, StageError
from .stage import Stage, hook_problems


class StageSet:
    """Ordered stage instances of a run with helpers to call one hook across them."""

    def __init__(self, stages: list[Stage], source: str = "<recipe>"):
        self.stages = list(stages)
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        problems: list[tuple[str, str]] = []
        for index, stage in enumerate(self.stages):
            refused = hook_problems(type(stage))  # options pluggy accepts but we would ignore
            if refused:
                problems += [(f"stage[{index}]", problem) for problem in refused]
                continue
            try:
                self.manager.register(stage, name=f"{index}:{stage.id}")
            except pluggy.PluginValidationError as exc:
                problems.append((f"stage[{index}]", f"plugin '{stage.name}' is broken: {exc}"))
        for hook in hookspecs.EXCLUSIVE_HOOKS:
            owners = [s for s in self.stages if self.implements(s, hook)]
            if len(owners) > 1:
                names = " and ".join(f"'{s.id}'" for s in owners)
                problems.append(
                    (
                        "stage",
                        f"{names} both implement {hook}; a recipe may have only one such stage",
                    )
                )
        if problems:
            raise RecipeError(source, problems)
        self._impls: dict[str, list[tuple[Stage, Any, tuple[str, ...]]]] = {}
        for name in hookspecs.RUN_HOOKS:
            caller = getattr(self.manager.hook, name)
            by_plugin = {id(impl.plugin): impl for impl in caller.get_hookimpls()}
            self._impls[name] = [
                (stage, by_plugin[id(stage)].function, tuple(by_plugin[id(stage)].argnames))
                for stage in self.stages
                if id(stage) in by_plugin
            ]

    @staticmethod
    def implements(stage: Stage, hook: str) -> bool:
        method = getattr(stage, hook, None)
        return method is not None and hasattr(method, hookspecs.PROJECT + "_impl")

    def has(self, hook: str) -> bool:
        return bool(self._impls[hook])

    def owners(self, hook: str) -> list[Stage]:
        return [stage for stage, _, _ in self._impls[hook]]

    def call(
        self,
        hook: str,
        *,
        step: int | None = None,
        t: int | None = None,
        where: Callable[[Stage], bool] | None = None,
        **kwargs: Any,
    ) -> Iterable[tuple[Stage, Any]]:
        """Call ``hook`` on every implementing stage in recipe order, yielding ``(stage, result)``;
        ``where`` skips stages for which it is false (e.g. outside their window).

        Any exception that is not already a project error is wrapped in :class:`StageError`
        naming the stage, the hook and the step.  A hook no stage implements costs one lookup.
        """
        impls = self._impls[hook]
        if not impls:
            return ()
        return self._calls(impls, hook, step, t, where, kwargs)

    @staticmethod
    def _calls(
        impls: list[tuple[Stage, Any, tuple[str, ...]]],
        hook: str,
        step: int | None,
        t: int | None,
        where: Callable[[Stage], bool] | None,
        kwargs: dict[str, Any],
    ) -> Iterator[tuple[Stage, Any]]:
        for stage, function, argnames in impls:
            if where is not None and not where(stage):
                continue
            try:
                result = function(**{name: kwargs[name] for name in argnames})
            except GuidestackError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised with context
                raise StageError(stage.id, hook, step, t, exc) from exc
            yield stage, result

    def first(self, hook: str, **kwargs: Any) -> Any:
        """The first non-``None`` result of an exclusive hook, or ``None``."""
        for _, result in self.call(hook, **kwargs):
            if result is not None:
                return result
        return None
