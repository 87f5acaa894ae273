"""``guidestack explain NAME`` and ``guidestack new-plugin NAME``: the plugin author's commands.

``explain`` answers "what does this plugin do and how do I configure it" from the registry
itself (descriptions, hook docstrings, pydantic options models, recipes), so it can never drift
from the code.  ``new-plugin`` writes a package like examples/guidestack-plugin-example
(see :mod:`.scaffold`).  :func:`options_schema` is shared with ``guidestack plugins --json``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from guidestack.engine import hookspecs
from guidestack.engine.errors import RecipeError, UsageError
from guidestack.engine.registry import Registry

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


def _format_constraints(constraints: dict[str, Any]) -> str:
    labels = dict(_CONSTRAINTS)
    return ", ".join(f"{labels[k]} {v}" for k, v in constraints.items())


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
    """The first sentence of a hook's documentation in :mod:`.hookspecs`."""
    doc = inspect.getdoc(getattr(hookspecs, hook, None)) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split()).replace("``", "`")
    return _SENTENCE_END.split(paragraph, maxsplit=1)[0].rstrip(".")


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
    from guidestack.engine.recipe import load_raw, recipe_index

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
    from guidestack.engine.recipe import recipe_index

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


# --- text output -------------------------------------------------------------------------------


def _plugin_line(p: dict[str, Any]) -> str:
    version = f" {p['version']}" if p.get("version") else ""
    api = f", hook API {p['hook_api_version']}" if p.get("hook_api_version") else ""
    return f"plugin {p['name']}{version} ({p.get('module')}{api})"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def format_entry(info: dict[str, Any]) -> str:
    lines = [f"{info['kind']} {info['name']}  —  from {_plugin_line(info['plugin'])}"]
    lines += [f"  {info['description']}"]
    if info["defined_in"]:
        lines += [f"  defined in {info['defined_in']}"]
    if info["details"] and info["details"] != info["description"]:
        lines += ["", *("  " + line if line else "" for line in info["details"].splitlines())]
    if info["hooks"]:
        lines += ["", "hooks (when the loop calls them):"]
        lines += _table(
            [
                [h["name"], h["when"] + (" [one stage per recipe]" if h["exclusive"] else "")]
                for h in info["hooks"]
            ]
        )
    if info["requires"]:
        lines += ["", f"requires: {', '.join(info['requires'])} (checked before anything runs)"]
    if info["options"]:
        lines += ["", f"options ({_addressing(info)}):"]
        rows = [["name", "type", "default", "constraints", "description"]]
        for name, o in info["options"].items():
            default = "(required)" if o["required"] else json.dumps(o["default"])
            rows.append(
                [name, o["type"], default, _format_constraints(o["constraints"]), o["description"]]
            )
        lines += _table(rows)
    elif info["kind"] in ("stage", "restorer", "degradation"):
        lines += ["", "options: none"]
    lines += ["", "recipes using it:" if info["recipes"] else "recipes using it: none"]
    for r in info["recipes"]:
        lines.append(f"  {r['name']} ({r['plugin']}): {', '.join(r['where'])}")
    return "\n".join(lines)


def _addressing(info: dict[str, Any]) -> str:
    name = info["name"]
    if info["kind"] == "stage":
        return f'[[stage]] use = "{name}"; --set stage.<id>.<option>=VALUE, id defaults to "{name}"'
    if info["kind"] in ("restorer", "degradation"):
        return f'as a reference inside a stage\'s options: {{ use = "{name}", <option> = VALUE }}'
    return "passed to the factory"


def format_plugin(info: dict[str, Any]) -> str:
    lines = [_plugin_line(info)]
    for kind, items in info["provides"].items():
        for item in items:
            lines.append(f"  {kind:<13} {item['name']:<24} {item['description']}")
    if info["recipes"]:
        lines.append(f"  recipes       {', '.join(info['recipes'])}")
    lines.append("`guidestack explain <name>` shows the options of each.")
    return "\n".join(lines)


# --- commands ----------------------------------------------------------------------------------


def add_plugin_commands(sub: Any) -> None:
    """Add ``explain`` and ``new-plugin`` to the ``guidestack`` subcommands."""
    explain_p = sub.add_parser(
        "explain",
        help="describe a stage, restorer, prior or plugin: hooks, options, recipes using it",
    )
    explain_p.add_argument(
        "name", help="a registered name or a plugin name (`guidestack plugins` lists them)"
    )
    explain_p.add_argument(
        "--kind", choices=[*KINDS, "plugin"], help="only look for this kind of thing"
    )
    explain_p.add_argument("--json", action="store_true")

    new = sub.add_parser(
        "new-plugin", help="create a third-party plugin package (stages, a recipe, tests) to edit"
    )
    new.add_argument("name", help="plugin name: lowercase letters, digits and dashes, e.g. sharpen")
    new.add_argument(
        "-o",
        "--output",
        default=".",
        help="folder in which guidestack-NAME/ is created (default: .)",
    )


def run_plugin_command(args: argparse.Namespace, registry: Callable[[], Registry]) -> int:
    """Dispatch ``explain`` / ``new-plugin``; ``registry`` is called only when needed."""
    if args.command == "explain":
        found = explain(registry(), args.name, args.kind)
        if args.json:
            print(json.dumps(found if len(found) > 1 else found[0], indent=2))
        else:
            print(
                "\n\n".join(
                    format_plugin(i) if i["kind"] == "plugin" else format_entry(i) for i in found
                )
            )
        return 0
    if args.command == "new-plugin":
        from .scaffold import scaffold

        root, written = scaffold(args.name, Path(args.output), registry=registry())
        for path in written:
            print(path.relative_to(root.parent))
        print(
            f"\ncreated {root}\nnext:\n  pip install -e {root}\n  pytest {root}\n"
            f"  guidestack explain {args.name}",
            file=sys.stderr,
        )
        return 0
    raise UsageError(f"unknown command {args.command}")
