"""The hook reference has one source: the hookspecs.  docs/hooks.md is generated from them
(``guidestack.engine.hookdoc``) and must equal what the generator writes; the generator shows every
hookspec with its exact signature; the loop diagram and ``RUN_HOOKS`` list the hooks in the order
the real loop calls them; and the other places that used to keep their own copy (docs/plugins.md,
docs/architecture.md, the ``new-plugin`` scaffold) point at it or derive from it.  Everything is
read from ``guidestack.engine.hookspecs`` at test time, so a hook added later fails here until the
reference is regenerated."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

import pytest
import torch
from conftest import REPO

from guidestack.engine import hookdoc, hookspecs
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.registry import Registry, load_registry
from guidestack.engine.stage import Stage
from guidestack.testing import run_trajectory, tiny_prior

DOCS = REPO / "docs"
REFERENCE = DOCS / "hooks.md"


def hookspec_names() -> list[str]:
    """Every function of the hookspecs module marked as a hookspec, found by its marker."""
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


def sections(text: str, heading: str) -> dict[str, str]:
    """``{name: section text}`` for every ``### `name` `` section under ``## heading``."""
    part = text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### `(\w+)`\s*$", part, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def hook_sections(text: str) -> dict[str, str]:
    return {**sections(text, "Package level"), **sections(text, "Run hooks")}


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
def generated() -> str:
    return hookdoc.render()


def test_committed_reference_is_the_generated_one(generated):
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.is_file() else ""
    assert committed == generated, (
        f"docs/hooks.md is out of date with the hookspecs: run `{hookdoc.REGENERATE}` "
        "(with .venv/bin/python) and commit the result"
    )


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    assert hookdoc.main(["--check", str(REFERENCE)]) == 0
    stale = tmp_path / "hooks.md"
    stale.write_text(REFERENCE.read_text(encoding="utf-8").replace("optimise", "optimize"))
    assert hookdoc.main(["--check", str(stale)]) == 1
    assert hookdoc.REGENERATE in capsys.readouterr().err
    assert hookdoc.main([str(stale)]) == 0 and hookdoc.main(["--check", str(stale)]) == 0


def test_every_hookspec_is_listed_as_a_package_or_run_hook():
    assert sorted(hookspec_names()) == sorted(hookdoc.hookspec_names())
    assert len(set(hookdoc.hookspec_names())) == len(hookdoc.hookspec_names())


def test_every_hookspec_documented_with_its_exact_signature(generated):
    documented = hook_sections(generated)
    problems = []
    for name in hookspec_names():
        if name not in documented:
            problems.append(f"{name}: not in the generated reference")
            continue
        args, returns, decorators = documented_signature(documented[name], name)
        want_args, want_returns = spec_signature(name)
        if (args, returns) != (want_args, want_returns):
            problems.append(
                f"{name}: documented ({args}) -> {returns}, hookspec ({want_args}) -> {want_returns}"
            )
        if "hookimpl" not in decorators:
            problems.append(f"{name}: the documented signature lacks @hookimpl")
        doc = " ".join((inspect.getdoc(getattr(hookspecs, name)) or "").split())
        if len(doc) < 80 or doc.replace("``", "`") not in " ".join(documented[name].split()):
            problems.append(f"{name}: its docstring is missing or not shown in full")
    assert not problems, "\n".join(problems)
    assert list(sections(generated, "Run hooks")) == list(hookspecs.RUN_HOOKS)


def test_exclusive_hooks_are_documented_as_exclusive(generated):
    documented = hook_sections(generated)
    marker = hookspecs.PROJECT + "_spec"
    for name in hookspec_names():
        firstresult = getattr(getattr(hookspecs, name), marker).get("firstresult", False)
        exclusive = firstresult or name in hookspecs.EXCLUSIVE_HOOKS
        said = "Exclusive: one stage per recipe" in " ".join(documented[name].split())
        assert said == exclusive, name


def test_registry_methods_and_refused_options_are_documented(generated):
    documented = re.findall(r"^#### `registry\.(\w+)`", generated, flags=re.M)
    assert documented == [n for n in vars(Registry) if n.startswith("add_")]
    for option in hookspecs.REFUSED_OPTIONS:
        assert f"- `{option}`: " in generated
    assert f"hook API version {hookspecs.HOOK_API_VERSION}" in generated


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


def test_loop_diagram_and_run_hooks_follow_the_order_the_loop_calls_them(generated):
    diagram = hookspecs.LOOP
    assert f"```text\n{diagram}```" in generated
    hooks = set(hookspecs.RUN_HOOKS)
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
    assert set(actual) == hooks
    assert documented == actual
    assert list(hookspecs.RUN_HOOKS) == actual


def test_hand_written_docs_point_at_the_reference_instead_of_copying_it():
    plugins = (DOCS / "plugins.md").read_text(encoding="utf-8")
    copies = [  # a hook's own section, or its signature stub (`def hook(...) -> ...: ...`)
        name
        for name in hookspec_names()
        if re.search(rf"^#+ `{name}`|^def {name}\(.*\): \.\.\.$", plugins, flags=re.M)
    ]
    assert not copies, f"docs/plugins.md keeps its own copy of hooks {copies}: link hooks.md"
    loop = [line.strip() for line in hookspecs.LOOP.splitlines() if line.strip()]
    assert not [line for line in loop if line in plugins], "docs/plugins.md copies the loop"
    assert "(hooks.md)" in plugins
    assert "hook_api_version = " in plugins and "GUIDESTACK_BLOCK_PLUGINS" in plugins
    assert "hooks.md" in (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert "docs/hooks.md" in inspect.getdoc(hookspecs)


def test_scaffold_lists_the_hooks_from_the_hookspecs(tmp_path):
    from guidestack.cli.scaffold import scaffold

    root, _ = scaffold("hookcheck", tmp_path)
    stages = (root / "src" / "guidestack_hookcheck" / "stages.py").read_text(encoding="utf-8")
    listed = re.findall(r"^    (\w+)\(self", stages, flags=re.M)
    assert listed == list(hookspecs.RUN_HOOKS)
    for hook in hookspecs.RUN_HOOKS:
        assert hookdoc.hook_summary(hook) in " ".join(stages.split())
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "docs/hooks.md" in readme
