"""The layers of docs/architecture.md, enforced on every ``import`` statement of the package.

* the engine (``guidestack.engine``) imports nothing of guidestack but itself;
* image files (``guidestack.io``) import only the engine's errors and themselves;
* the public API (``guidestack``, ``guidestack.api``, ``.lookup``, ``.result``, ``.progress``,
  ``.distributed``) imports the
  engine and ``guidestack.io``, never a plugin or an application;
* the applications (the CLI, the web UI, the bench) use only the public API;
* one method's stages never import another method's modules, and nothing outside the stages
  imports a stage module.

Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

#: import name of each source folder
ROOTS = {
    "engine": "guidestack.engine",
    "plugins": "guidestack.plugins",
    "src/guidestack": "guidestack",
}
PUBLIC_API = (
    "guidestack",
    "guidestack.api",
    "guidestack.lookup",
    "guidestack.result",
    "guidestack.progress",
    "guidestack.distributed",
)
#: the methods' stage modules (plugins/stages/<module>.py), by method
METHODS = {
    "pgdiff": (
        "pgdiff",
        "properties",
        "smooth_semantics",
        "lightness",
        "color_statistics",
        "unmasked_region",
        "identity",
        "perceptual",
        "pgdiff_options",
    ),
    "difface": ("difface", "paste_known", "difface_options"),
    "odedit": ("odedit", "projections", "odedit_options"),
    "shred": ("shred", "shred_options"),
    "dps": ("dps", "dps_options"),
    "ddnm": ("ddnm", "ddnm_options"),
}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in ROOTS.items():
        base = REPO / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if name.startswith("guidestack.engine") and folder == "src/guidestack":
                continue
            out[name] = path
    return out


def imported(name: str, path: Path) -> set[str]:
    """Every guidestack module ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from guidestack import api`` imports the module guidestack.api
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in ALL}
    return {m for m in found if m == "guidestack" or m.startswith("guidestack.")}


ALL = modules()


def within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(allowed) -> list[str]:
    out = []
    for name, path in ALL.items():
        for target in sorted(imported(name, path)):
            reason = allowed(name, target)
            if reason:
                out.append(f"{name} imports {target}: {reason}")
    return out


def test_the_module_map_is_complete():
    assert "guidestack.engine.sampler" in ALL and "guidestack.cli.run" in ALL
    assert "guidestack.plugins.stages.shred" in ALL and "guidestack.io.images" in ALL


def test_engine_imports_only_itself():
    def rule(name: str, target: str) -> str | None:
        if within(name, "guidestack.engine") and not within(target, "guidestack.engine"):
            return "the engine imports no plugin, application or file layer"
        return None

    assert not violations(rule)


def test_io_imports_only_the_engines_errors():
    def rule(name: str, target: str) -> str | None:
        if within(name, "guidestack.io") and not within(
            target, "guidestack.io", "guidestack.engine.errors"
        ):
            return "guidestack.io sits just above the engine's errors"
        return None

    assert not violations(rule)


def test_public_api_never_imports_plugins_or_applications():
    def rule(name: str, target: str) -> str | None:
        if name in PUBLIC_API and within(target, "guidestack.plugins", "guidestack.cli"):
            return "the public API reaches plugins through the registry only"
        return None

    assert not violations(rule)


APPLICATIONS = ("guidestack.cli", "guidestack.plugins.ui", "guidestack.plugins.bench")
#: what the bench measures with, besides the public API
BENCH_TOOLS = ("guidestack.plugins.degradations", "guidestack.plugins.metrics")


def test_applications_use_only_the_public_api():
    def rule(name: str, target: str) -> str | None:
        app = next((a for a in APPLICATIONS if within(name, a)), None)
        if app is None:
            return None
        allowed = (*PUBLIC_API, "guidestack.io", app)
        if app == "guidestack.plugins.bench":
            allowed += BENCH_TOOLS
        if target in PUBLIC_API or within(target, *allowed[len(PUBLIC_API) :]):
            return None
        return "applications use the public API (guidestack, guidestack.api, guidestack.io)"

    assert not violations(rule)


def _method_of(module: str) -> str | None:
    prefix = "guidestack.plugins.stages."
    if not module.startswith(prefix):
        return None
    short = module[len(prefix) :].split(".")[0]
    return next((m for m, members in METHODS.items() if short in members), f"unassigned:{short}")


def test_every_stage_module_belongs_to_a_method():
    stages = [n for n in ALL if n.startswith("guidestack.plugins.stages.")]
    unassigned = [n for n in stages if (_method_of(n) or "").startswith("unassigned")]
    assert not unassigned, f"add {unassigned} to METHODS"


def test_methods_do_not_import_each_other_and_others_do_not_import_stages():
    def rule(name: str, target: str) -> str | None:
        theirs = _method_of(target)
        if theirs is None or name == "guidestack.plugins.builtin":
            return None
        mine = _method_of(name)
        if mine is None:
            return f"only the {theirs} method's own modules import its stage modules"
        if mine != theirs:
            return f"method {mine} imports method {theirs}'s module"
        return None

    assert not violations(rule)


@pytest.mark.parametrize(
    ("name", "target", "expected"),
    [
        ("guidestack.engine.sampler", "guidestack.plugins.builtin", True),
        ("guidestack.engine.sampler", "guidestack.engine.steps", False),
        ("guidestack.plugins.metrics.identity", "guidestack.plugins.stages.identity", True),
        ("guidestack.plugins.stages.difface", "guidestack.plugins.stages.paste_known", False),
        ("guidestack.plugins.stages.shred", "guidestack.plugins.stages.odedit", True),
    ],
)
def test_the_rules_catch_what_they_name(name, target, expected):
    """The checks above are not vacuous: known bad imports are caught, good ones are not."""
    engine = within(name, "guidestack.engine") and not within(target, "guidestack.engine")
    mine, theirs = _method_of(name), _method_of(target)
    crossing = theirs is not None and mine != theirs
    assert (engine or crossing) is expected
