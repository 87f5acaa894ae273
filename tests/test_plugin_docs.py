"""docs/plugins.md stays true: every hookspec is documented with its exact signature, nothing
else is documented as a hook, and the loop diagram lists the hooks in the order the real loop
calls them.  Everything is read from ``guidestack.engine.hookspecs`` at test time, so a hook
added later fails here until it is documented."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

import pytest
import torch
from conftest import REPO

from guidestack.engine import hookspecs
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.registry import load_registry
from guidestack.engine.stage import Stage
from guidestack.testing import run_trajectory, tiny_prior

DOC = REPO / "docs" / "plugins.md"


def hookspec_names() -> list[str]:
    marker = hookspecs.PROJECT + "_spec"
    return [
        name
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, marker)
    ]


def spec_signature(name: str) -> tuple[list[tuple[str, str]], str]:
    """``([(arg, annotation)], return annotation)`` of a hookspec, annotations as source text."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = [(p.name, str(p.annotation)) for p in sig.parameters.values()]
    return params, str(sig.return_annotation)


def documented_hooks(text: str) -> dict[str, str]:
    """``{hook: section text}`` for every ``### `name` `` section of the hook reference."""
    reference = text.split("## Hook reference", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### `(\w+)`\s*$", reference, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def documented_signature(section: str, name: str) -> tuple[list[tuple[str, str]], str, list[str]]:
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, f"the section of hook {name} has no ```python signature block"
    tree = ast.parse(textwrap.dedent(match.group(1)))
    (func,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    args = [(a.arg, ast.unparse(a.annotation) if a.annotation else "") for a in func.args.args]
    decorators = [ast.unparse(d) for d in func.decorator_list]
    if args and args[0][0] == "self":
        args = args[1:]
    return args, ast.unparse(func.returns) if func.returns else "", decorators


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_hookspecs_are_found():
    names = hookspec_names()
    assert "register" in names and set(hookspecs.RUN_HOOKS) <= set(names)


def test_every_hookspec_documented_with_its_exact_signature(doc_text):
    sections = documented_hooks(doc_text)
    problems = []
    for name in hookspec_names():
        if name not in sections:
            problems.append(f"{name}: not documented (add a ### `{name}` section)")
            continue
        args, returns, decorators = documented_signature(sections[name], name)
        want_args, want_returns = spec_signature(name)
        if (args, returns) != (want_args, want_returns):
            problems.append(
                f"{name}: documented ({args}) -> {returns}, hookspec ({want_args}) -> {want_returns}"
            )
        if "hookimpl" not in decorators:
            problems.append(f"{name}: the documented signature lacks @hookimpl")
    assert not problems, "\n".join(problems)


def test_no_stale_hooks_documented(doc_text):
    stale = set(documented_hooks(doc_text)) - set(hookspec_names())
    assert not stale, f"documented but not hooks: {sorted(stale)}"


def test_exclusive_hooks_are_documented_as_exclusive(doc_text):
    sections = documented_hooks(doc_text)
    marker = hookspecs.PROJECT + "_spec"
    for name in hookspec_names():
        firstresult = getattr(getattr(hookspecs, name), marker).get("firstresult", False)
        if firstresult or name in hookspecs.EXCLUSIVE_HOOKS:
            assert "Exclusive: one stage per recipe" in " ".join(sections[name].split()), name


def test_hook_api_version_documented(doc_text):
    assert "hook_api_version = " in doc_text
    assert "GUIDESTACK_BLOCK_PLUGINS" in doc_text


def loop_diagram(text: str) -> str:
    section = text.split("## The loop", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```text\n(.*?)```", section, flags=re.S)
    assert match, "the loop section has no ```text diagram"
    return match.group(1)


def _spy_stage(calls: list[str]) -> type[Stage]:
    """A stage implementing EVERY run hook with the hookspec's own argument names, each recording
    its name and returning None (so the ordinary loop runs from noise)."""
    namespace: dict = {"hookimpl": hookimpl, "calls": calls, "Stage": Stage}
    methods = []
    for hook in hookspecs.RUN_HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
        methods.append(
            f"    @hookimpl\n    def {hook}(self, {params}):\n        calls.append({hook!r})\n"
        )
    source = "class Spy(Stage):\n    name = 'doc-spy'\n" + "".join(methods)
    exec(source, namespace)  # noqa: S102 - builds a test stage from the hookspecs themselves
    return namespace["Spy"]


def test_loop_diagram_lists_hooks_in_the_order_the_loop_calls_them(doc_text):
    diagram = loop_diagram(doc_text)
    hooks = set(hookspec_names()) - {"register"}
    documented: list[str] = []
    for name in re.findall(r"\b(\w+)\(", diagram):
        if name in hooks and name not in documented:
            documented.append(name)
    missing = hooks - set(documented)
    assert not missing, f"hooks missing from the loop diagram: {sorted(missing)}"

    calls: list[str] = []
    registry = load_registry(blocked=set(), entry_points=False)
    registry.add_stage(_spy_stage(calls))
    run = run_trajectory(
        {"sampler": {"kind": "ddpm", "steps": 3}, "stage": [{"use": "doc-spy"}]},
        tiny_prior(8),
        torch.zeros(1, 3, 8, 8),
        registry=registry,
    )
    assert len(run.steps) == 3
    actual: list[str] = []
    for name in calls:
        if name not in actual:
            actual.append(name)
    assert {
        "optimise",
        "initial_latent",
        "update_latent",
        "guidance_loss",
        "project",
        "finalize",
    } <= set(actual)
    assert [h for h in documented if h in actual] == actual
