"""The built-in plugin's index: what it registers, as import paths and the metadata listings need.

``guidestack --help``, ``recipes``, ``plugins`` and ``validate`` must answer without importing
torch (about 1.5 s of CPU), yet most built-in stages, restorers and operators live in modules
that import it.  So the built-in plugin registers from ``builtin_index.json``: for each entry
its kind, name, description, the import path of the object (``"module:attr"``) and of its
options model (in a module without torch), a stage's hooks, a prior's factory and facts.  The
registry imports an object on first use and checks it against the entry.

The index is generated from :func:`guidestack.plugins.builtin.register_eagerly`, which imports
everything, so it never drifts from the code: regenerate it after changing what the built-ins
register (``python -m guidestack.plugins.index``); a test fails while it is stale.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from guidestack.engine.errors import PluginError
from guidestack.engine.registry import Entry, Registry, import_object

INDEX = "builtin_index.json"
#: the kinds whose objects are classes (or instances) with ``name``/``description``
_CLASS_KINDS = ("stage", "restorer", "degradation", "pipeline", "upsampler")


def load() -> list[dict[str, Any]]:
    """The entries of the shipped index, in registration order."""
    return json.loads((files("guidestack.plugins") / INDEX).read_text(encoding="utf-8"))


def apply(registry: Registry, entries: list[dict[str, Any]]) -> None:
    """Register every entry lazily (nothing is imported)."""
    for e in entries:
        kind = e["kind"]
        if kind == "stage":
            registry.add_stage(
                e["target"],
                name=e["name"],
                description=e["description"],
                options=e["options"],
                hooks=tuple(e["hooks"]),
            )
        elif kind == "upsampler":
            registry.add_upsampler(e["target"], name=e["name"], description=e["description"])
        elif kind in _CLASS_KINDS:
            getattr(registry, f"add_{kind}")(
                e["target"], name=e["name"], description=e["description"], options=e["options"]
            )
        elif kind == "prior":
            registry.add_prior(
                e["name"],
                _deferred(e["factory"]),
                e["description"],
                e["options"],
                facts=None if e["facts"] is None else _deferred(e["facts"]),
            )
        elif kind == "prior_backend":
            registry.add_prior_backend(e["name"], e["claims"], e["load"], e["description"])
        elif kind == "command":
            registry.add_command(e["name"], e["description"], e["module"])
        else:  # pragma: no cover - the generator writes only the kinds above
            raise PluginError(f"unknown kind {kind!r} in the built-in index")


def _deferred(ref: dict[str, Any]) -> Callable[..., Any]:
    """A callable that imports ``ref["path"]`` when called and calls it with ``ref["args"]``
    first (a prior factory or facts function, possibly a ``functools.partial``)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return import_object(ref["path"])(*ref["args"], *args, **kwargs)

    return call


# --- generation --------------------------------------------------------------------------------


def path_of(obj: Any) -> str:
    """``"module:name"`` under which ``obj`` is importable (a module-level name of its module)."""
    module = getattr(obj, "__module__", None) or type(obj).__module__
    namespace = vars(sys.modules[module])
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(qualname, str) and "<" not in qualname and namespace.get(qualname) is obj:
        return f"{module}:{qualname}"
    names = [n for n, v in namespace.items() if v is obj and not n.startswith("__")]
    if not names:
        raise PluginError(
            f"{obj!r} is not a module-level name of {module}; the built-in index can only name "
            "module-level objects"
        )
    return f"{module}:{sorted(names)[0]}"


def _callable(fn: Any) -> dict[str, Any]:
    if isinstance(fn, functools.partial):
        if fn.keywords or not all(isinstance(a, str | int | float) for a in fn.args):
            raise PluginError(f"{fn!r}: only partials with plain positional arguments are indexed")
        return {"path": path_of(fn.func), "args": list(fn.args)}
    return {"path": path_of(fn), "args": []}


def describe(entry: Entry) -> dict[str, Any]:
    """The index row of an eagerly registered ``entry``."""
    row: dict[str, Any] = {"kind": entry.kind, "name": entry.name, "description": entry.description}
    obj = entry.obj
    if entry.kind in _CLASS_KINDS:
        row["target"] = path_of(obj)
        if entry.kind != "upsampler":
            row["options"] = None if entry.options is None else path_of(entry.options)
        if entry.kind == "stage":
            row["hooks"] = list(entry.hooks)
    elif entry.kind == "prior":
        row["factory"] = _callable(obj)
        row["options"] = None if entry.options is None else path_of(entry.options)
        row["facts"] = None if entry.facts is None else _callable(entry.facts)
    elif entry.kind == "prior_backend":
        row["claims"], row["load"] = (path_of(f) for f in obj)
    elif entry.kind == "command":
        configure, run = obj
        module = configure.__module__
        if (configure.__name__, run.__name__, run.__module__) != ("configure", "run", module):
            raise PluginError(f"command '{entry.name}': index commands are modules' configure/run")
        row["module"] = module
    return row


def build() -> list[dict[str, Any]]:
    """The index, generated by registering the built-ins eagerly (this imports everything)."""
    from .builtin import register_eagerly

    registry = Registry()
    registry.current_plugin = "builtin"
    register_eagerly(registry)
    # each kind in its registration order (listings and prior backends' claims follow it)
    return [describe(entry) for table in registry.entries.values() for entry in table.values()]


def main(argv: list[str] | None = None) -> int:
    """Write the index next to this module (or to the path given)."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else Path(__file__).with_name(INDEX)
    target.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
