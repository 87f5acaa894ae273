"""The hook reference, generated: docs/hooks.md is :func:`render` of the code itself.

The one source is :mod:`.hookspecs` (hook signatures, docstrings, the loop, refused options,
API versions), the ``add_*`` methods of :class:`.registry.Registry` and the classes hooks
receive (:mod:`.context`, :mod:`.loop_api`), as pytest's reference is generated from its
hookspecs.  ``python -m guidestack.engine.hookdoc docs/hooks.md`` writes the file;
``--check`` exits 1 when the file differs (tests/test_plugin_docs.py does the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import hookspecs

REGENERATE = "python -m guidestack.engine.hookdoc docs/hooks.md"
_ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc):`~?\.*([\w.]+)`")
#: a full stop followed by a capital letter (so "e.g. paste" does not end a sentence)
_SENTENCE_END = re.compile(r"(?<=[\w)\]`])\.\s+(?=[A-Z])")


# --- reading the code ----------------------------------------------------------------------


def markdown(doc: str) -> str:
    """A docstring in the project's reST-ish style as Markdown: ````x```` and ``:class:`~a.X```
    become ```x``` and ```X```."""
    return _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", doc).replace("``", "`")


def docstring(obj: Any) -> str:
    return markdown(inspect.getdoc(obj) or "")


def hook_summary(hook: str) -> str:
    """The first sentence of a hook's docstring (what ``new-plugin`` lists)."""
    paragraph = " ".join(docstring(getattr(hookspecs, hook)).split("\n\n")[0].split())
    return _SENTENCE_END.split(paragraph, maxsplit=1)[0].rstrip(".")


def hookspec_names() -> list[str]:
    """Every hookspec: package-level hooks, then run hooks in the order the loop calls them."""
    return [*hookspecs.PACKAGE_HOOKS, *hookspecs.RUN_HOOKS]


def is_exclusive(hook: str) -> bool:
    opts = getattr(getattr(hookspecs, hook), hookspecs.PROJECT + "_spec", {})
    return bool(opts.get("firstresult")) or hook in hookspecs.EXCLUSIVE_HOOKS


def _parameters(function: Callable[..., Any], skip_self: bool) -> list[str]:
    out = []
    for p in inspect.signature(function).parameters.values():
        if skip_self and p.name == "self":
            continue
        star = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        text = star + p.name
        if p.annotation is not inspect.Parameter.empty:
            text += f": {p.annotation}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        out.append(text)
    return out


def _call(name: str, params: list[str], returns: Any, prefix: str = "def ") -> str:
    """``prefix name(params) -> returns``, one parameter per line when it gets long."""
    tail = "" if returns is inspect.Signature.empty else f" -> {returns}"
    line = f"{prefix}{name}({', '.join(params)}){tail}"
    if len(line) <= 96:
        return line
    inner = "".join(f"    {p},\n" for p in params)
    return f"{prefix}{name}(\n{inner}){tail}"


def hook_signature(hook: str) -> str:
    """How a plugin writes the hook: a ``Stage`` method for run hooks, a module function for
    package hooks, with the hookspec's exact arguments and annotations."""
    function = getattr(hookspecs, hook)
    params = _parameters(function, skip_self=False)
    if hook in hookspecs.RUN_HOOKS:
        params = ["self", *params]
    returns = inspect.signature(function).return_annotation
    return f"@hookimpl\n{_call(hook, params, returns)}: ..."


def _field_comments(cls: type) -> dict[str, str]:
    """``#: comment`` lines written above a class's fields, by field name."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # pragma: no cover - classes without source
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and pending:
            found[match.group(1)] = " ".join(pending)
        pending = []
    return found


def class_members(cls: type) -> list[str]:
    """Markdown list items: dataclass fields (type, ``#:`` comment), then public properties and
    methods defined on the class (signature, first docstring paragraph)."""
    items = []
    comments = _field_comments(cls)
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            note = f" — {markdown(comments[f.name])}" if f.name in comments else ""
            items.append(f"- `{f.name}: {f.type}`{note}")
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            summary = docstring(member).split("\n\n")[0].replace("\n", " ")
            items.append(f"- `{name}` (property)" + (f" — {summary}" if summary else ""))
        elif inspect.isfunction(member):
            signature = _call(
                name,
                _parameters(member, skip_self=True),
                inspect.signature(member).return_annotation,
                prefix="",
            ).replace("\n", " ")
            summary = docstring(member).split("\n\n")[0].replace("\n", " ")
            items.append(f"- `{signature}`" + (f" — {summary}" if summary else ""))
    return items


# --- the document --------------------------------------------------------------------------


def _registry_methods() -> list[tuple[str, Callable[..., Any]]]:
    from .registry import Registry

    return [
        (name, member)
        for name, member in vars(Registry).items()
        if name.startswith("add_") and inspect.isfunction(member)
    ]


def _received_classes() -> list[type]:
    from .context import InitialLatent, Observation, RunContext, StepState
    from .loop_api import LoopHandle, RunResult

    return [RunContext, StepState, Observation, InitialLatent, RunResult, LoopHandle]


def render() -> str:
    """The whole of docs/hooks.md."""
    out: list[str] = [
        "# Hook reference",
        "",
        f"<!-- Generated by `{REGENERATE}` from guidestack.engine.hookspecs, the",
        "Registry's add_* methods and the classes hooks receive. Do not edit by hand:",
        "tests/test_plugin_docs.py fails when this file differs from what the generator writes. -->",
        "",
        "Generated from the code (`guidestack.engine.hookspecs` and the docstrings it points to),",
        "so it is exact for this version of guidestack. [plugins.md](plugins.md) is the tutorial:",
        "how to write, test, install and block a plugin.",
        "",
        "Run hooks are methods of a `Stage` subclass (hence `self`) and the package hook is a",
        "module-level function, all decorated with `hookimpl` from",
        "`guidestack.engine.hookspecs`. Types: `RunContext`, `StepState`, `InitialLatent`",
        "(`guidestack.engine.context`), `RunResult`, `LoopHandle` (`guidestack.engine.loop_api`),",
        "`Registry` (`guidestack.engine.registry`).",
        "",
        "## Overview",
        "",
        # the module docstring without its first paragraph (which is about this generator)
        docstring(hookspecs).split("\n\n", 1)[1],
        "",
        "## The loop: when each hook runs",
        "",
        "```text",
        hookspecs.LOOP.rstrip("\n"),
        "```",
        "",
        "## Package level",
        "",
    ]
    for hook in hookspecs.PACKAGE_HOOKS:
        out += [f"### `{hook}`", "", "```python", hook_signature(hook), "```", ""]
        out += [docstring(getattr(hookspecs, hook)), ""]
    out += [
        "### What `register` may add",
        "",
        "Methods of the `Registry` it receives:",
        "",
    ]
    for name, method in _registry_methods():
        signature = _call(
            f"registry.{name}",
            _parameters(method, skip_self=True),
            inspect.signature(method).return_annotation,
            prefix="",
        )
        out += [f"#### `registry.{name}`", "", "```python", signature, "```", ""]
        out += [docstring(method), ""]
    out += ["## Run hooks, in the order the loop calls them", ""]
    for hook in hookspecs.RUN_HOOKS:
        out += [f"### `{hook}`", "", "```python", hook_signature(hook), "```", ""]
        out += [docstring(getattr(hookspecs, hook)), ""]
        if is_exclusive(hook):
            out += [
                "Exclusive: one stage per recipe may implement it (two are a recipe error before",
                "anything runs); the first non-`None` result is used.",
                "",
            ]
    out += [
        "## Refused hookimpl options",
        "",
        "The engine calls run hooks itself, in recipe order, so pluggy's ordering and wrapping",
        "options would be silently ignored; a stage using one is refused when it is registered",
        "and when a run is assembled, with an error naming the class, the hook and the option.",
        "Instead:",
        "",
    ]
    out += [
        f"- `{option}`: {advice.replace('[[stage]]', '`[[stage]]`')}."
        for option, advice in hookspecs.REFUSED_OPTIONS.items()
    ]
    out += [
        "",
        "## Versions",
        "",
        f"This guidestack provides hook API version {hookspecs.HOOK_API_VERSION}",
        "(`guidestack.engine.hookspecs.HOOK_API_VERSION`). A plugin module declares the version it",
        "was written against as `hook_api_version = N`; a plugin declaring a newer version is",
        "skipped with a warning that says how to block it. History:",
        "",
    ]
    out += [f"- {version}: {change}" for version, change in hookspecs.HOOK_API_HISTORY.items()]
    out += ["", "## What hooks receive", ""]
    for cls in _received_classes():
        out += [f"### `{cls.__name__}` (`{cls.__module__}`)", "", docstring(cls), ""]
        out += [*class_members(cls), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guidestack.engine.hookdoc", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("path", type=Path, help="the Markdown file to write (docs/hooks.md)")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file is not current"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.is_file() else None
        if current != text:
            print(f"{args.path} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
