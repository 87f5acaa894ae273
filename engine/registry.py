"""The package-level registry: every named stage, prior, restorer and recipe folder.

Plugins fill it through the ``register(registry)`` hook (see :mod:`.hookspecs`).  Built-in
plugins are registered first, then every entry point of the ``guidestack`` group.  Names are
unique across plugins: a clash is an error naming both plugins, never a silent override.
``GUIDESTACK_BLOCK_PLUGINS=a,b`` (or ``blocked=``) skips plugins by name.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel

from . import hookspecs
from .errors import PluginError
from .stage import Stage

ENTRY_POINT_GROUP = "guidestack"
BLOCK_ENV = "GUIDESTACK_BLOCK_PLUGINS"
BUILTIN_PLUGINS = ("guidestack.plugins.builtin",)


@dataclass
class Entry:
    """One registered thing: its kind, name, the object, its options model and origin."""

    kind: str
    name: str
    obj: Any
    options: type[BaseModel] | None
    description: str
    plugin: str
    hooks: tuple[str, ...] = ()


@dataclass
class Registry:
    """Named stages, priors, restorers and degradations, plus recipe folders."""

    entries: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {
            "stage": {},
            "prior": {},
            "prior_backend": {},
            "restorer": {},
            "degradation": {},
            "pipeline": {},
            "command": {},
        }
    )
    recipe_folders: list[tuple[str, Traversable | Path]] = field(default_factory=list)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the plugin whose ``register`` hook is running (set by :func:`load_registry`)
    current_plugin: str = "<direct>"

    def _add(self, entry: Entry) -> None:
        table = self.entries.setdefault(entry.kind, {})
        if entry.name in table:
            other = table[entry.name].plugin
            raise PluginError(
                f"{entry.kind} name '{entry.name}' is registered twice: by plugin '{other}' and by "
                f"plugin '{entry.plugin}'. Uninstall or block one of them "
                f"({BLOCK_ENV}={entry.plugin})."
            )
        table[entry.name] = entry
        self.plugins.setdefault(entry.plugin, {}).setdefault(entry.kind, []).append(entry.name)

    def add_stage(self, cls: type[Stage]) -> None:
        """Register a :class:`Stage` subclass under ``cls.name``."""
        hooks = tuple(
            h for h in hookspecs.RUN_HOOKS if hasattr(getattr(cls, h, None), "guidestack_impl")
        )
        self._add(
            Entry("stage", cls.name, cls, cls.Options, cls.description, self.current_plugin, hooks)
        )

    def add_prior(
        self,
        name: str,
        factory: Callable[..., Any],
        description: str,
        options: type[BaseModel] | None = None,
    ) -> None:
        """Register a prior: ``factory(device=..., dtype=..., **options)`` returns a Prior."""
        self._add(Entry("prior", name, factory, options, description, self.current_plugin))

    def add_prior_backend(
        self,
        name: str,
        claims: Callable[[str], bool],
        load: Callable[..., Any],
        description: str,
    ) -> None:
        """Register a prior backend: ``claims(ref)`` says whether ``load(ref, device=, dtype=)``
        understands a prior reference that is not a registered name: a path or hub id given as
        a string, or an object (e.g. a diffusers ``UNet2DModel``) from the Python API, in which
        case ``load`` also receives the API's keyword arguments (``scheduler``,
        ``alphas_cumprod``...)."""
        self._add(
            Entry("prior_backend", name, (claims, load), None, description, self.current_plugin)
        )

    def add_restorer(self, cls: type) -> None:
        """Register a restorer class (``name``, ``description``, ``Options``)."""
        self._add(
            Entry("restorer", cls.name, cls, cls.Options, cls.description, self.current_plugin)
        )

    def add_degradation(self, cls: type) -> None:
        """Register a degradation operator class (``name``, ``description``, ``Options``)."""
        self._add(
            Entry("degradation", cls.name, cls, cls.Options, cls.description, self.current_plugin)
        )

    def add_pipeline(self, cls: type) -> None:
        """Register a photo pipeline class (``name``, ``description``, ``Options``; see
        :mod:`.pipeline`), e.g. ``faces``."""
        self._add(
            Entry("pipeline", cls.name, cls, cls.Options, cls.description, self.current_plugin)
        )

    def add_command(
        self,
        name: str,
        description: str,
        configure: Callable[[Any], None],
        run: Callable[[Any, Registry], int],
    ) -> None:
        """Register a ``guidestack NAME`` command (llm's ``register_commands``, for argparse).

        ``configure(parser)`` adds the command's arguments to its ``argparse`` sub-parser (it may
        add sub-commands); ``run(args, registry)`` does the work and returns the exit code.  The
        CLI calls ``configure`` only while building its parser and ``run`` only when the command
        is used, so a command's heavy imports belong inside ``run``.
        """
        self._add(Entry("command", name, (configure, run), None, description, self.current_plugin))

    def add_recipes(self, folder: Traversable | Path) -> None:
        """Add a folder of ``*.toml`` recipes (e.g. ``importlib.resources.files(pkg)``)."""
        self.recipe_folders.append((self.current_plugin, folder))

    # --- lookups ------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries.get(kind, {}))

    def get(self, kind: str, name: str) -> Entry | None:
        return self.entries.get(kind, {}).get(name)

    def stage(self, name: str) -> type[Stage] | None:
        entry = self.get("stage", name)
        return None if entry is None else entry.obj


def blocked_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def load_registry(blocked: set[str] | None = None, entry_points: bool = True) -> Registry:
    """Build a fresh registry from the built-in plugins and installed entry points."""
    blocked = blocked_from_env() if blocked is None else set(blocked)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    modules: list[tuple[str, Any]] = []
    for module_name in BUILTIN_PLUGINS:
        name = module_name.rsplit(".", 1)[-1]
        if name not in blocked:
            modules.append((name, importlib.import_module(module_name)))
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must say which it is
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}) failed to import: {type(exc).__name__}: {exc}. "
                    f"Reinstall it, or block it with {BLOCK_ENV}={ep.name}."
                ) from exc
            check_api_version(ep.name, module)
            modules.append((ep.name, module))
    for name, module in modules:
        try:
            manager.register(module, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin '{name}' cannot be registered: {exc}") from exc
        registry.current_plugin = name
        impl = getattr(module, "register", None)
        if impl is not None:
            impl(registry=registry)
        registry.plugins.setdefault(name, {})
        registry.plugins[name]["module"] = getattr(module, "__name__", str(module))
        registry.plugins[name]["version"] = _dist_version(module)
    registry.current_plugin = "<direct>"
    return registry


def check_api_version(name: str, module: Any) -> None:
    """Refuse a plugin built for a newer hook API than this guidestack provides.

    A plugin module declares the API it was written against as ``hook_api_version = N``
    (:data:`.hookspecs.HOOK_API_VERSION` when it was built); without one the current API is assumed.
    """
    wanted = getattr(module, "hook_api_version", hookspecs.HOOK_API_VERSION)
    where = getattr(module, "__name__", repr(module))
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise PluginError(
            f"plugin '{name}' ({where}) declares hook_api_version = {wanted!r}; it must be a "
            f"positive integer (this guidestack provides {hookspecs.HOOK_API_VERSION}). Fix the "
            f"plugin, or block it with {BLOCK_ENV}={name}."
        )
    if wanted > hookspecs.HOOK_API_VERSION:
        raise PluginError(
            f"plugin '{name}' ({where}) was built for guidestack hook API version {wanted}, but "
            f"this guidestack provides hook API version {hookspecs.HOOK_API_VERSION}. Upgrade "
            f"guidestack, install an older release of the plugin, or block it with "
            f"{BLOCK_ENV}={name}."
        )


def _dist_version(module: Any) -> str | None:
    top = getattr(module, "__name__", "").split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            continue
    return None


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry (loaded once; tests build their own with :func:`load_registry`)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_registry()
    return _DEFAULT
