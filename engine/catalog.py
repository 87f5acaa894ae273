"""The registry described: options models as schemas, what a plugin contributes, which recipes
use a stage, listings of plugins and recipes.

Everything here is read from the registry itself (descriptions, hook docstrings, pydantic options
models, recipes), so listings, ``guidestack explain``, the web UI's controls and the Python API
never drift from the code.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from . import hookdoc, hookspecs
from .errors import RecipeError, UsageError
from .registry import Registry

KINDS = ("stage", "restorer", "degradation", "prior", "prior_backend")
#: option fields every stage has that a recipe fills for it (never shown as options)
_IMPLICIT_FIELDS = ("use",)
#: a full stop followed by a capital letter (so "e.g. paste" does not end a sentence)
_SENTENCE_END = re.compile(r"(?<=[\w)\]`])\.\s+(?=[A-Z])")
_CONSTRAINTS = (
    ("gt", ">"),
    ("ge", ">="),
    ("lt", "<"),
    ("le", "<="),
    ("multiple_of", "multiple of"),
    ("min_length", "min length"),
    ("max_length", "max length"),
)


# --- options models ----------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """A readable, stable name of a field type: ``float``, ``tuple[int, int] | None``,
    ``"ddim" | "ddpm"``, ``restorer reference``."""
    if annotation is type(None):
        return "None"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return (
            f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
            if args
            else name
        )
    if isinstance(annotation, type):
        kind = getattr(annotation, "kind", None)
        if (
            isinstance(kind, str)
            and issubclass(annotation, BaseModel)
            and "use" in annotation.model_fields
        ):
            return f"{kind} reference"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constraints(field: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for meta in field.metadata:
        for attr, _ in _CONSTRAINTS:
            value = getattr(meta, attr, None)
            if value is not None:
                found[attr] = value
    return found


def options_schema(model: type[BaseModel] | None) -> dict[str, dict[str, Any]]:
    """Every option of a plugin's options model as JSON-able data, in declaration order:
    ``{name: {"type", "required", "default", "constraints", "description"}}``."""
    if model is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, field in model.model_fields.items():
        if name in _IMPLICIT_FIELDS:
            continue
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        out[name] = {
            "type": type_name(field.annotation),
            "required": required,
            "default": to_jsonable_python(default, fallback=repr),
            "constraints": _constraints(field),
            "description": field.description or "",
        }
    return out


# --- facts about plugins -----------------------------------------------------------------------


def plugin_api_version(module_name: str | None) -> int | None:
    """The ``hook_api_version`` a plugin module declares (``None`` if it declares none)."""
    if not module_name:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    value = getattr(module, "hook_api_version", None)
    return value if isinstance(value, int) else None


def hook_summary(hook: str) -> str:
    """The first sentence of a hook's documentation in :mod:`.hookspecs` (Markdown quotes)."""
    return hookdoc.hook_summary(hook).replace("``", "`")


def run_hooks() -> list[dict[str, Any]]:
    """The run-level hooks in the order the loop calls them: name, arguments, first sentence of
    the documentation, and whether one stage per recipe may implement it."""
    return [
        {
            "name": hook,
            "arguments": list(inspect.signature(getattr(hookspecs, hook)).parameters),
            "summary": hookdoc.hook_summary(hook),
            "exclusive": hook in hookspecs.EXCLUSIVE_HOOKS,
        }
        for hook in hookspecs.RUN_HOOKS
    ]


def _uses(node: Any, name: str, path: str) -> list[str]:
    """Paths inside a stage table where ``{use = name}`` appears (the table itself included)."""
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("use") == name:
            found.append(path)
        for key, value in node.items():
            found += _uses(value, name, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _uses(value, name, f"{path}[{i}]")
    return found


def recipes_using(registry: Registry, kind: str, name: str) -> list[dict[str, Any]]:
    """Named recipes (built-in and from plugins) that use ``name``, with where they use it.

    Stages and restorers/degradations are found in ``[[stage]]`` tables (nested references
    included); priors in ``[prior] name``.  A recipe that cannot be read is skipped here
    (``guidestack validate`` reports it).
    """
    from .recipe import load_raw, recipe_index

    out = []
    for recipe_name, (plugin, _) in sorted(recipe_index(registry).items()):
        try:
            _, raw, _ = load_raw(recipe_name, registry)
        except RecipeError:
            continue
        where: list[str] = []
        if kind == "prior":
            if isinstance(raw.get("prior"), dict) and raw["prior"].get("name") == name:
                where.append("prior.name")
        else:
            for i, stage in enumerate(raw.get("stage") or []):
                paths = _uses(stage, name, f"stage[{i}]")
                where += [p for p in paths if kind == "stage" or p != f"stage[{i}]"]
        if where:
            out.append({"name": recipe_name, "plugin": plugin, "where": where})
    return out


def _plugin_facts(registry: Registry, plugin: str) -> dict[str, Any]:
    info = registry.plugins.get(plugin, {})
    return {
        "name": plugin,
        "module": info.get("module"),
        "version": info.get("version"),
        "hook_api_version": plugin_api_version(info.get("module")),
    }


def explain_entry(registry: Registry, kind: str, name: str) -> dict[str, Any]:
    """Everything ``explain`` says about one registered stage, restorer, prior..."""
    entry = registry.get(kind, name)
    if entry is None:
        raise UsageError(f"no {kind} named '{name}'")
    obj = entry.obj
    info: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "description": entry.description,
        "plugin": _plugin_facts(registry, entry.plugin),
        "defined_in": f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else None,
        "details": inspect.cleandoc(obj.__doc__) if isinstance(obj, type) and obj.__doc__ else "",
        "hooks": [
            {"name": h, "when": hook_summary(h), "exclusive": h in hookspecs.EXCLUSIVE_HOOKS}
            for h in entry.hooks
        ],
        "requires": list(getattr(obj, "requires", ()) or ()),
        "options": options_schema(entry.options),
        "recipes": recipes_using(registry, kind, name),
    }
    return info


def explain_plugin(registry: Registry, plugin: str) -> dict[str, Any]:
    """What one installed plugin (package) contributes."""
    from .recipe import recipe_index

    contents = registry.plugins.get(plugin, {})
    provides = {
        kind: [
            {"name": n, "description": registry.get(kind, n).description}
            for n in contents.get(kind, [])
        ]
        for kind in KINDS
        if contents.get(kind)
    }
    recipes = sorted(n for n, (owner, _) in recipe_index(registry).items() if owner == plugin)
    return {
        "kind": "plugin",
        **_plugin_facts(registry, plugin),
        "provides": provides,
        "recipes": recipes,
    }


def explain(registry: Registry, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Explanations of everything called ``name`` (of ``kind`` if given)."""
    kinds = (kind,) if kind else (*KINDS, "plugin")
    found = []
    for k in kinds:
        if k == "plugin":
            if name in registry.plugins:
                found.append(explain_plugin(registry, name))
        elif registry.get(k, name) is not None:
            found.append(explain_entry(registry, k, name))
    if not found:
        known = sorted({n for k in KINDS for n in registry.names(k)} | set(registry.plugins))
        close = _suggestions(name, known)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        what = f"{kind} " if kind else ""
        raise UsageError(
            f"nothing {what}named '{name}' is installed.{hint} `guidestack plugins` lists every "
            "plugin, stage, restorer and prior."
        )
    return found


def _suggestions(name: str, known: list[str]) -> list[str]:
    """Known names containing ``name``, close to it, or with a dash-separated part close to it."""
    close = [n for n in known if name in n] or difflib.get_close_matches(name, known, n=3)
    if not close:
        close = [
            n for n in known if difflib.get_close_matches(name, n.split("-"), n=1, cutoff=0.75)
        ]
    return close[:3]


# --- listings ----------------------------------------------------------------------------------

#: the kinds ``plugins_listing`` shows for each plugin, in this order
LISTED_KINDS = (
    "stage",
    "prior",
    "prior_backend",
    "restorer",
    "degradation",
    "pipeline",
    "upsampler",
    "command",
)


def plugins_listing(registry: Registry) -> list[dict[str, Any]]:
    """Every installed plugin with what it registered (name, description, hooks, options)."""
    out = []
    for plugin, info in sorted(registry.plugins.items()):
        entry: dict[str, Any] = {
            "name": plugin,
            "module": info.get("module"),
            "version": info.get("version"),
            "hook_api_version": plugin_api_version(info.get("module")),
        }
        for kind in LISTED_KINDS:
            entry[kind + "s"] = [
                {
                    "name": n,
                    "description": registry.get(kind, n).description,
                    "hooks": list(registry.get(kind, n).hooks),
                    "options": options_schema(registry.get(kind, n).options),
                }
                for n in info.get(kind, [])
            ]
        entry["broken"] = None
        out.append(entry)
    for broken in registry.broken:  # skipped plugins: listed, contributing nothing
        out.append(
            {
                "name": broken.name,
                "module": broken.entry_point,
                "version": broken.version,
                "hook_api_version": None,
                **{kind + "s": [] for kind in LISTED_KINDS},
                "broken": broken.as_dict(),
            }
        )
    return out


def recipes_listing(registry: Registry) -> list[dict[str, Any]]:
    """Every named recipe: name, plugin, description and the stages it uses."""
    from .recipe import load_raw, recipe_index

    rows = []
    for name, (plugin, _) in sorted(recipe_index(registry).items()):
        _, raw, _ = load_raw(name, registry)
        rows.append(
            {
                "name": name,
                "plugin": plugin,
                "description": raw.get("description", ""),
                "stages": [s.get("use") for s in raw.get("stage", [])],
            }
        )
    return rows
