"""``guidestack explain NAME`` and ``guidestack new-plugin NAME``: the plugin author's commands.

``explain`` prints what :mod:`guidestack.engine.catalog` reads from the registry (descriptions,
hook docstrings, options models, recipes using it), so it can never drift from the code;
``new-plugin`` writes a package like examples/guidestack-plugin-example (see :mod:`.scaffold`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guidestack import Registry, UsageError, lookup

#: the labels of options-model constraints in ``explain``'s option tables
_CONSTRAINT_LABELS = {
    "gt": ">",
    "ge": ">=",
    "lt": "<",
    "le": "<=",
    "multiple_of": "multiple of",
    "min_length": "min length",
    "max_length": "max length",
}


def format_constraints(constraints: dict[str, Any]) -> str:
    return ", ".join(f"{_CONSTRAINT_LABELS[k]} {v}" for k, v in constraints.items())


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
                [name, o["type"], default, format_constraints(o["constraints"]), o["description"]]
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
        "--kind", choices=[*lookup.KINDS, "plugin"], help="only look for this kind of thing"
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
        found = lookup.explain(args.name, args.kind, registry=registry())
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
