"""The package-level registry: every named stage, prior, restorer, command and recipe folder.

Plugins fill it through the ``register(registry)`` hook (see :mod:`.hookspecs`).  Built-in
plugins are registered first, then every entry point of the ``guidestack`` group.  Names are
unique across plugins: a clash is an error naming both plugins, never a silent override.
``GUIDESTACK_BLOCK_PLUGINS=a,b`` (or ``blocked=``) skips plugins by name.

A broken plugin never takes the others down: :func:`load_registry` records a plugin that fails
to import (``sys.exit`` included), declares a newer hook API, is not a valid plugin module, or
whose ``register`` raises, in :attr:`Registry.broken` (name, entry point, cause, how to block
it), removes whatever it had registered, and goes on.  Only ``KeyboardInterrupt`` gets through.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel

from . import hookspecs
from .errors import GuidestackError, PluginError
from .stage import Stage, hook_problems

ENTRY_POINT_GROUP = "guidestack"
BLOCK_ENV = "GUIDESTACK_BLOCK_PLUGINS"
BUILTIN_PLUGINS = ("guidestack.plugins.builtin",)
#: commands of guidestack itself; a plugin command may not take these names
CORE_COMMANDS = ("run", "recipes", "plugins", "validate", "explain", "new-plugin")
COMMAND_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


@dataclass
class Entry:
    """One registered thing: its kind, name, the object, its options model and origin.

    ``target`` and ``options_target`` hold the object and options model, or, for a lazy entry,
    where to import them from (``"package.module:Name"``): :attr:`obj` and :attr:`options`
    import them on first use, so listings and recipe checks never import what they do not run.
    """

    kind: str
    name: str
    target: Any
    options_target: type[BaseModel] | str | None
    description: str
    plugin: str
    hooks: tuple[str, ...] = ()
    #: a prior's facts without loading it (see :meth:`Registry.add_prior`)
    facts: Callable[[], PriorFacts] | None = field(default=None, repr=False, compare=False)
    #: checks a lazily imported object against what was registered (raises PluginError)
    check: Callable[[Entry, Any], None] | None = field(default=None, repr=False, compare=False)

    @property
    def lazy(self) -> bool:
        """Whether the object is still an import path (nothing imported yet)."""
        return isinstance(self.target, LazyRef)

    @property
    def obj(self) -> Any:
        """The registered object, imported (and checked) on first use for a lazy entry."""
        if isinstance(self.target, LazyRef):
            obj = self.target.load(self)
            if self.check is not None:
                self.check(self, obj)
            self.target = obj
        return self.target

    @property
    def options(self) -> type[BaseModel] | None:
        """The options model, imported on first use when it was registered as a path."""
        if isinstance(self.options_target, str):
            self.options_target = import_object(self.options_target, self, "with options")
        return self.options_target


@dataclass(frozen=True)
class PriorFacts:
    """What recipe checks need of a prior (``Recipe.for_prior``, ``Stage.prior_problems``),
    known without loading it: its name and kind (``per_prior`` keys), schedule length and
    image size.  A loaded ``Prior`` has the same attributes."""

    name: str
    kind: str
    num_train_timesteps: int
    image_size: int


@dataclass(frozen=True)
class LazyRef:
    """Where a lazy entry's object lives: one ``"module:attr"`` path, or several for an object
    that is a tuple (a prior backend's ``claims`` and ``load``, a command's ``configure`` and
    ``run``)."""

    paths: tuple[str, ...]

    def load(self, entry: Entry) -> Any:
        found = tuple(import_object(p, entry) for p in self.paths)
        return found[0] if len(found) == 1 else found


def import_object(path: str, entry: Entry | None = None, what: str = "as") -> Any:
    """The object at ``"package.module:attr"`` (``attr`` may be dotted), imported now;
    :class:`PluginError` naming the plugin and entry when it cannot be found."""
    module_name, sep, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split(".") if sep and attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        where = (
            "cannot import"
            if entry is None
            else (f"plugin '{entry.plugin}' registered {entry.kind} '{entry.name}' {what}")
        )
        raise PluginError(
            f"{where} {path!r}, which cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    return obj


def _is_path(value: Any) -> bool:
    return isinstance(value, str)


@dataclass
class BrokenPlugin:
    """A plugin :func:`load_registry` skipped: which, where, at what phase, and why.

    ``phase`` is ``"import"``, ``"hook API version"``, ``"plugin module"`` (not a valid plugin
    module) or ``"register"``; ``error`` is the cause (``"ModuleNotFoundError: No module named
    'x'"``, ``"sys.exit(0)"``...); ``exception`` the exception itself, for tracebacks.
    """

    name: str
    entry_point: str
    phase: str
    error: str
    advice: str = "Fix or reinstall it"
    version: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def block(self) -> str:
        """The environment setting that skips this plugin."""
        return f"{BLOCK_ENV}={self.name}"

    def message(self) -> str:
        """One line a user can act on: the plugin, what failed, and how to block it."""
        cause = {
            "import": f"importing it failed with {self.error}",
            "plugin module": f"it is not a usable plugin module: {self.error}",
            "register": "its register() failed (what it had registered was removed): " + self.error,
        }.get(self.phase, self.error)
        text = f"plugin '{self.name}' ({self.entry_point}) was skipped: {cause}".rstrip(".") + "."
        if self.block not in text:
            text += f" {self.advice}, or block it with {self.block}."
        return " ".join(text.split())  # one line, whatever the error's own layout

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "error": self.error,
            "message": self.message(),
            "block": self.block,
        }


@dataclass
class Registry:
    """Named stages, priors, restorers, degradations and commands, plus recipe folders.

    ``broken`` lists the plugins :func:`load_registry` skipped (see :class:`BrokenPlugin`).
    """

    entries: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {
            "stage": {},
            "prior": {},
            "prior_backend": {},
            "restorer": {},
            "degradation": {},
            "pipeline": {},
            "upsampler": {},
            "command": {},
        }
    )
    recipe_folders: list[tuple[str, Traversable | Path]] = field(default_factory=list)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    broken: list[BrokenPlugin] = field(default_factory=list)
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

    def _remove_plugin(self, plugin: str) -> None:
        """Forget everything ``plugin`` registered (its ``register`` failed half way)."""
        for table in self.entries.values():
            for name in [n for n, e in table.items() if e.plugin == plugin]:
                del table[name]
        self.recipe_folders = [(p, f) for p, f in self.recipe_folders if p != plugin]
        self.plugins.pop(plugin, None)

    def add_stage(
        self,
        cls: type[Stage] | str,
        *,
        name: str | None = None,
        description: str | None = None,
        options: type[BaseModel] | str | None = None,
        hooks: Sequence[str] = (),
    ) -> None:
        """Register a ``Stage`` subclass under ``cls.name``: what a recipe's ``[[stage]] use =
        "name"`` makes, one instance per table and per run.

        The class declares ``name``, a one-line ``description``, an ``Options`` model (derived
        from ``StageOptions``, or ``GuidanceOptions`` for stages returning a loss) and
        implements run hooks as methods marked ``@hookimpl``.  Hooks that would not run as
        written are refused here with the reason (``tryfirst``, ``trylast``, ``hookwrapper``,
        ``wrapper``, ``specname``, a marked method that is no run hook, a hook method without
        ``@hookimpl``, an argument the loop does not pass).

        Lazy form: ``cls`` is an import path (``"my_plugin.stages:Sharpen"``) and ``name``,
        ``description``, ``options`` (the model, or its path in a module that does not import
        torch) and ``hooks`` say what the class will say; the class is imported when a run (or
        ``explain``) first needs it, and refused then if it disagrees with them.
        """
        if _is_path(cls):
            self._add_lazy("stage", cls, name, description, options, tuple(hooks), _check_stage)
            return
        problems = hook_problems(cls)
        if problems:
            raise PluginError(
                f"plugin '{self.current_plugin}' cannot register stage '{getattr(cls, 'name', '?')}'"
                f": {'; '.join(problems)}"
            )
        self._add(
            Entry(
                "stage",
                cls.name,
                cls,
                cls.Options,
                cls.description,
                self.current_plugin,
                stage_hooks(cls),
            )
        )

    def _add_lazy(
        self,
        kind: str,
        path: str,
        name: str | None,
        description: str | None,
        options: type[BaseModel] | str | None,
        hooks: tuple[str, ...] = (),
        check: Callable[[Entry, Any], None] | None = None,
    ) -> None:
        """Register the class (or instance) at ``path`` without importing it."""
        if not name or description is None:
            raise PluginError(
                f"plugin '{self.current_plugin}' registers {kind} {path!r} lazily: give its "
                "name= and description= too (they are listed without importing it)"
            )
        unknown = [h for h in hooks if h not in hookspecs.RUN_HOOKS]
        if unknown:
            raise PluginError(
                f"plugin '{self.current_plugin}' cannot register {kind} '{name}': "
                f"{', '.join(unknown)} is not a run hook"
            )
        target = LazyRef((path,))
        plugin = self.current_plugin
        self._add(Entry(kind, name, target, options, description, plugin, hooks, check=check))

    def add_prior(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        description: str,
        options: type[BaseModel] | str | None = None,
        facts: Callable[[], PriorFacts] | None = None,
    ) -> None:
        """Register a named prior (``--prior NAME``, a recipe's ``[prior] name``):
        ``factory(device=..., dtype=..., **options)`` returns a ``Prior``.

        ``factory`` may be an import path (``"my_plugin.priors:load_mine"``), imported when the
        prior is first loaded.  ``facts()`` (optional, must not load the prior) returns its
        :class:`PriorFacts`, so ``guidestack validate`` specialises recipes without loading it."""
        target = LazyRef((factory,)) if _is_path(factory) else factory
        self._add(
            Entry("prior", name, target, options, description, self.current_plugin, facts=facts)
        )

    def add_prior_backend(
        self,
        name: str,
        claims: Callable[[str], bool] | str,
        load: Callable[..., Any] | str,
        description: str,
    ) -> None:
        """Register a prior backend: ``claims(ref)`` says whether ``load(ref, device=, dtype=)``
        understands a prior reference that is not a registered name: a path or hub id given as
        a string, or an object (e.g. a diffusers ``UNet2DModel``) from the Python API, in which
        case ``load`` also receives the API's keyword arguments (``scheduler``,
        ``alphas_cumprod``...).  Both may be import paths, imported when first asked."""
        if _is_path(claims) != _is_path(load):
            raise PluginError(
                f"plugin '{self.current_plugin}' cannot register prior backend '{name}': give "
                "claims and load both as functions or both as import paths"
            )
        target = LazyRef((claims, load)) if _is_path(claims) else (claims, load)
        self._add(Entry("prior_backend", name, target, None, description, self.current_plugin))

    def _add_class(
        self,
        kind: str,
        cls: type | str,
        name: str | None,
        description: str | None,
        options: type[BaseModel] | str | None,
    ) -> None:
        if _is_path(cls):
            self._add_lazy(kind, cls, name, description, options, check=_check_class)
            return
        self._add(Entry(kind, cls.name, cls, cls.Options, cls.description, self.current_plugin))

    def add_restorer(
        self,
        cls: type | str,
        *,
        name: str | None = None,
        description: str | None = None,
        options: type[BaseModel] | str | None = None,
    ) -> None:
        """Register a restorer class (``name``, ``description``, ``Options``; ``restore(y,
        x_t=None, t=None)``, ``depends_on_t``), referenced from stage options as ``{ use =
        "name", ... }``.  Lazy form as for :meth:`add_stage` (an import path, with ``name``,
        ``description`` and ``options``)."""
        self._add_class("restorer", cls, name, description, options)

    def add_degradation(
        self,
        cls: type | str,
        *,
        name: str | None = None,
        description: str | None = None,
        options: type[BaseModel] | str | None = None,
    ) -> None:
        """Register a degradation operator class (``name``, ``description``, ``Options``; see
        ``guidestack.plugins.degradations.base.Degradation``: ``forward``, ``measure``,
        ``simulate``; linear ones ``adjoint`` and, where it exists, ``pinv``), used by the
        solvers' ``operator = { use = "name", ... }``, ``guidestack degrade`` and ``bench``.
        Lazy form as for :meth:`add_stage`."""
        self._add_class("degradation", cls, name, description, options)

    def add_pipeline(
        self,
        cls: type | str,
        *,
        name: str | None = None,
        description: str | None = None,
        options: type[BaseModel] | str | None = None,
    ) -> None:
        """Register a photo pipeline class (``name``, ``description``, ``Options``; see
        :mod:`.pipeline`), e.g. ``faces``.  Lazy form as for :meth:`add_stage`."""
        self._add_class("pipeline", cls, name, description, options)

    def add_upsampler(
        self, upsampler: Any, *, name: str | None = None, description: str | None = None
    ) -> None:
        """Register an upsampler instance (``name``, ``description``, ``__call__(images, size)``,
        ``unavailable()``; see :mod:`.upsampler`).  Lazy form: the instance's import path, with
        ``name`` and ``description``."""
        if _is_path(upsampler):
            self._add_lazy("upsampler", upsampler, name, description, None, check=_check_named)
            return
        self._add(
            Entry(
                "upsampler",
                upsampler.name,
                upsampler,
                None,
                upsampler.description,
                self.current_plugin,
            )
        )

    def add_command(
        self,
        name: str,
        description: str,
        configure: Callable[[Any], None] | str,
        run: Callable[[Any, Registry], int] | None = None,
    ) -> None:
        """Register a ``guidestack NAME`` command (llm's ``register_commands``, for argparse).

        ``configure(parser)`` adds the command's arguments to its ``argparse`` sub-parser (it may
        add sub-commands); ``run(args, registry)`` does the work and returns the exit code.
        ``configure`` runs once here on a scratch parser, so a broken one fails at registration,
        and again when the CLI builds its parser; ``run`` only when the command is used, so a
        command's heavy imports belong inside ``run``.  ``NAME`` is lowercase words joined by
        dashes and may not be a core command (``run``, ``recipes``, ``plugins``, ``validate``,
        ``explain``, ``new-plugin``) or another plugin's command.

        Lazy form: ``configure`` is the import path of a module defining ``configure`` and
        ``run`` (``"my_plugin.command"``, no ``run`` argument); ``guidestack --help`` lists the
        command with ``description`` and the module is imported only when the command is used.
        """
        plugin = self.current_plugin
        if not isinstance(name, str) or not COMMAND_NAME.match(name):
            raise PluginError(
                f"plugin '{plugin}' cannot register command {name!r}: a command name is lowercase "
                "letters and digits, words joined by single dashes (e.g. mirror-score)"
            )
        if name in CORE_COMMANDS:
            raise PluginError(
                f"plugin '{plugin}' cannot register command '{name}': '{name}' is a "
                f"guidestack command (core commands: {', '.join(CORE_COMMANDS)}); choose another "
                "name"
            )
        if _is_path(configure):
            if run is not None:
                raise PluginError(
                    f"plugin '{plugin}' cannot register command '{name}': with a module path "
                    "the module's own configure and run are used; pass no run"
                )
            target = LazyRef((f"{configure}:configure", f"{configure}:run"))
            self._add(Entry("command", name, target, None, description, plugin))
            return
        if run is None:
            raise PluginError(f"plugin '{plugin}' cannot register command '{name}': no run")
        try:
            configure(argparse.ArgumentParser(prog=f"guidestack {name}"))
        except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
            raise PluginError(
                f"plugin '{plugin}' cannot register command '{name}': its configure(parser) failed "
                f"with {type(exc).__name__}: {exc}"
            ) from exc
        self._add(Entry("command", name, (configure, run), None, description, plugin))

    def add_recipes(self, folder: Traversable | Path) -> None:
        """Add a folder of ``*.toml`` recipes, e.g. ``importlib.resources.files(pkg) /
        "recipes"`` (ship them as package data).  A recipe is named after its file; a name
        another plugin already provides is an error naming both plugins (checked here, so the
        later plugin is skipped instead of breaking every recipe lookup)."""
        plugin = self.current_plugin
        taken = {
            name: other
            for other, known in self.recipe_folders
            if other != plugin
            for name in _recipe_names(known)
        }
        for name in _recipe_names(folder):
            if name in taken:
                raise PluginError(
                    f"recipe name '{name}' is provided by plugin '{taken[name]}' and by plugin "
                    f"'{plugin}'. Uninstall or block one of them ({BLOCK_ENV}={plugin})."
                )
        self.recipe_folders.append((plugin, folder))

    # --- lookups ------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries.get(kind, {}))

    def get(self, kind: str, name: str) -> Entry | None:
        return self.entries.get(kind, {}).get(name)

    def stage(self, name: str) -> type[Stage] | None:
        entry = self.get("stage", name)
        return None if entry is None else entry.obj

    def prior_facts(self, name: str) -> PriorFacts | None:
        """The facts of the registered prior ``name`` if it declares them (nothing is loaded)."""
        entry = self.get("prior", name)
        return None if entry is None or entry.facts is None else entry.facts()


def _recipe_names(folder: Traversable | Path) -> list[str]:
    return [i.name[: -len(".toml")] for i in folder.iterdir() if i.name.endswith(".toml")]


def stage_hooks(cls: type) -> tuple[str, ...]:
    """The run hooks a stage class implements, in the loop's order."""
    return tuple(h for h in hookspecs.RUN_HOOKS if _is_hookimpl(getattr(cls, h, None)))


def _disagreement(entry: Entry, facts: list[tuple[str, Any, Any]]) -> None:
    wrong = [f"{what} {got!r} (registered: {said!r})" for what, said, got in facts if said != got]
    if wrong:
        raise PluginError(
            f"plugin '{entry.plugin}' registered {entry.kind} '{entry.name}' lazily, but the "
            f"imported object disagrees: {'; '.join(wrong)}. Register what the object declares."
        )


def _check_named(entry: Entry, obj: Any) -> None:
    _disagreement(
        entry,
        [
            ("name", entry.name, getattr(obj, "name", None)),
            ("description", entry.description, getattr(obj, "description", None)),
        ],
    )


def _check_class(entry: Entry, cls: Any) -> None:
    _check_named(entry, cls)
    _disagreement(entry, [("Options", entry.options, getattr(cls, "Options", None))])


def _check_stage(entry: Entry, cls: Any) -> None:
    problems = hook_problems(cls)
    if problems:
        raise PluginError(
            f"plugin '{entry.plugin}' cannot register stage '{entry.name}': {'; '.join(problems)}"
        )
    _check_class(entry, cls)
    _disagreement(entry, [("hooks", entry.hooks, stage_hooks(cls))])


def blocked_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def _is_hookimpl(obj: Any) -> bool:
    return isinstance(getattr(obj, hookspecs.PROJECT + "_impl", None), dict)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return "sys.exit()" if exc.code is None else f"sys.exit({exc.code!r})"
    if isinstance(exc, GuidestackError):  # already a message for users
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def load_registry(blocked: set[str] | None = None, entry_points: bool = True) -> Registry:
    """Build a fresh registry from the built-in plugins and installed entry points.

    A plugin that cannot be used is recorded in ``registry.broken`` and skipped (see the module
    docstring); blocked plugins are not even imported.
    """
    blocked = blocked_from_env() if blocked is None else set(blocked)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    candidates: list[tuple[str, str, Callable[[], Any], str | None]] = [
        (m.rsplit(".", 1)[-1], m, lambda m=m: importlib.import_module(m), None)
        for m in BUILTIN_PLUGINS
    ]
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            candidates.append((ep.name, ep.value, ep.load, getattr(dist, "version", None)))
    for name, where, load, version in candidates:
        if name in blocked:
            continue
        failure = _load_plugin(registry, manager, name, load, version)
        if failure is not None:
            phase, error, exc, advice = failure
            registry.broken.append(
                BrokenPlugin(name, where, phase, error, advice, version, exception=exc)
            )
    return registry


def _load_plugin(
    registry: Registry,
    manager: pluggy.PluginManager,
    name: str,
    load: Callable[[], Any],
    version: str | None,
) -> tuple[str, str, BaseException | None, str] | None:
    """Import, check and register one plugin; ``(phase, error, exception, advice)`` if it is
    broken (then nothing of it is left in ``registry`` or ``manager``), else ``None``."""
    try:
        module = load()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - KeyboardInterrupt gets through
        return "import", _describe(exc), exc, "Fix or reinstall it"
    api = api_version_problem(module)
    if api is not None:
        return "hook API version", api[0], None, api[1]
    problems = module_problems(module)
    if not problems:
        try:
            manager.register(module, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            problems = [str(exc)]
    if problems:
        return "plugin module", "; ".join(problems), None, "Fix it"
    registry.current_plugin = name
    try:
        module.register(registry=registry)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - KeyboardInterrupt gets through
        registry._remove_plugin(name)
        manager.unregister(name=name)
        return "register", _describe(exc), exc, "Fix it"
    finally:
        registry.current_plugin = "<direct>"
    info = registry.plugins.setdefault(name, {})
    info["module"] = getattr(module, "__name__", str(module))
    info["version"] = version or _dist_version(module)  # an entry point knows its distribution
    return None


def module_problems(module: Any) -> list[str]:
    """Why ``module`` is not a usable plugin module (empty: it is).

    It must have a ``register(registry)`` function; ``@hookimpl`` functions at module level other
    than ``register`` (run hooks are ``Stage`` methods) and ordering or wrapping options on
    ``register`` (plugins register in load order) would be silently ignored, so they are refused.
    """
    problems = []
    register = getattr(module, "register", None)
    if not callable(register):
        problems.append(
            "it has no register(registry) function, so it would add nothing; define one (see "
            "docs/hooks.md)"
        )
    for attr in dir(module):
        function = getattr(module, attr, None)
        if not inspect.isroutine(function) or not _is_hookimpl(function):
            continue
        opts = getattr(function, hookspecs.PROJECT + "_impl")
        hook = opts.get("specname") or attr
        if hook not in hookspecs.PACKAGE_HOOKS:
            problems.append(
                f"module-level function {attr} is marked @hookimpl for {hook}, which is not a "
                "package-level hook; run hooks are methods of a Stage subclass the plugin "
                "registers with registry.add_stage"
            )
        elif attr != hook:
            problems.append(
                f"function {attr} uses @hookimpl(specname={hook!r}); name the function {hook}"
            )
        else:
            refused = [o for o in hookspecs.REFUSED_OPTIONS if opts.get(o)]
            if refused:
                problems.append(
                    f"register is marked @hookimpl({refused[0]}=True), which guidestack refuses: "
                    "plugins register once each, in load order (built-ins first), and register "
                    "is called directly; drop the option"
                )
    return problems


def api_version_problem(module: Any) -> tuple[str, str] | None:
    """``(reason, advice)`` if ``module`` declares a hook API this guidestack cannot serve.

    A plugin module declares the API it was written against as ``hook_api_version = N``
    (:data:`.hookspecs.HOOK_API_VERSION` when it was built); without one the current API is
    assumed.
    """
    wanted = getattr(module, "hook_api_version", hookspecs.HOOK_API_VERSION)
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        return (
            f"it declares hook_api_version = {wanted!r}; it must be a positive integer (this "
            f"guidestack provides {hookspecs.HOOK_API_VERSION})",
            "Fix the plugin",
        )
    if wanted > hookspecs.HOOK_API_VERSION:
        return (
            f"it was built for guidestack hook API version {wanted}, but this guidestack "
            f"provides hook API version {hookspecs.HOOK_API_VERSION}",
            "Upgrade guidestack, install an older release of the plugin",
        )
    return None


def check_api_version(name: str, module: Any) -> None:
    """Raise :class:`PluginError` if ``module`` declares a hook API this guidestack cannot
    serve (for code that registers a plugin module itself, e.g. ``guidestack.testing``)."""
    problem = api_version_problem(module)
    if problem is not None:
        reason, advice = problem
        where = getattr(module, "__name__", repr(module))
        raise PluginError(
            f"plugin '{name}' ({where}): {reason}. {advice}, or block it with {BLOCK_ENV}={name}."
        )


def _dist_version(module: Any) -> str | None:
    """The version of the distribution providing ``module`` (a distribution named like the
    top-level package is asked first: scanning every installed distribution takes ~0.5 s)."""
    top = getattr(module, "__name__", "").split(".")[0]
    if not top:
        return None
    try:
        return metadata.version(top)
    except metadata.PackageNotFoundError:
        pass
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
