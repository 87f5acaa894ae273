"""Lazy registration: the CLI's light commands import no torch, and lazy entries stay true.

``guidestack --help``, ``recipes``, ``plugins`` and ``validate`` must answer in well under a
second of CPU, so they may not import torch (or anything built on it): the built-in plugin
registers import paths from a generated index, and the registry imports an object on first use,
checking it against what was registered.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import LIGHT_CLI_SCRIPT, REPO

from guidestack.engine.errors import PluginError, RecipeError
from guidestack.engine.recipe import load_recipe, recipe_index
from guidestack.engine.registry import PriorFacts, Registry, load_registry
from guidestack.plugins import index


def heavy_imports(*commands: list[str]) -> dict[str, list[str]]:
    """Run the CLI's ``main`` on each argument list in ONE fresh process; for each, the heavy
    modules imported by then (the exit codes must be 0)."""
    done = subprocess.run(
        [sys.executable, "-c", LIGHT_CLI_SCRIPT, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    failed = {k: code for k, (code, _) in results.items() if code != 0}
    assert not failed, failed
    return {k: heavy for k, (_, heavy) in results.items()}


@pytest.mark.parametrize(
    "commands",
    [
        [["--help"]],
        [["recipes"], ["recipes", "--json"]],
        [["plugins"], ["plugins", "--json"]],
        [["validate", "inpaint"], ["validate", str(REPO / "recipes" / "old-photo.toml")]],
        [["validate", "odedit", "--prior", "gaussian-faces-64"]],
    ],
    ids=["help", "recipes", "plugins", "validate", "validate-prior"],
)
def test_light_commands_import_no_torch(commands):
    assert heavy_imports(*commands) == {" ".join(c): [] for c in commands}


def test_validating_every_builtin_recipe_imports_no_torch():
    """Every built-in recipe validates (per_prior applied for the default prior) without torch:
    options models declare their prior checks and their operators' capabilities."""
    names = sorted(recipe_index(load_registry(entry_points=False)))
    found = heavy_imports(*[["validate", n] for n in names])
    assert found == {f"validate {n}": [] for n in names} and len(names) >= 30


def test_the_help_lists_plugin_commands_without_importing_them():
    done = subprocess.run(
        [sys.executable, "-m", "guidestack", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in ("degrade", "bench", "prior", "ui", "restorers"):
        assert f"    {name} " in done.stdout or f"    {name}\n" in done.stdout
    # a lazily registered command is configured when used: its own help has its options
    sub = subprocess.run(
        [sys.executable, "-m", "guidestack", "degrade", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sub.returncode == 0 and "--debug" in sub.stdout and "--quiet" in sub.stdout
    assert "--severity" in sub.stdout or "--op" in sub.stdout or "OP" in sub.stdout


# --- the index -----------------------------------------------------------------------------------


def test_the_builtin_index_is_current():
    """``builtin_index.json`` says what registering the built-ins eagerly registers
    (regenerate it with ``python -m guidestack.plugins.index``)."""
    assert index.build() == index.load()


def test_every_lazy_entry_imports_and_agrees_with_its_registration():
    registry = load_registry(entry_points=False)
    lazy = [e for table in registry.entries.values() for e in table.values() if e.lazy]
    assert len(lazy) >= 50
    for entry in lazy:
        obj = entry.obj  # imports and checks name, description, Options, hooks
        assert not entry.lazy and obj is not None
        if entry.options is not None:
            assert entry.options.__module__.endswith("options"), entry.options


def test_prior_facts_are_those_of_the_loaded_priors():
    from guidestack.engine.prior_source import load_prior
    from guidestack.plugins.priors.ffdnet_weights import available

    registry = load_registry(entry_points=False)
    names = ["gaussian-faces-64", "offline"] + (["gaussian-faces-64+ffdnet"] if available() else [])
    for name in names:
        prior = load_prior(name, registry)
        facts = registry.prior_facts(name)
        loaded = (prior.name, prior.kind, prior.num_train_timesteps, prior.image_size)
        assert (facts.name, facts.kind, facts.num_train_timesteps, facts.image_size) == loaded


# --- the lazy form for plugin authors -----------------------------------------------------------

STAGE_MODULE = """
import sys
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import Stage
from lazy_options import HalfOptions

IMPORTED = True


class Half(Stage):
    name = "half"
    description = "x0 halved."
    Options = HalfOptions

    @hookimpl
    def transform_x0(self, ctx, state):
        state.x0 = state.x0 * 0.5
"""

OPTIONS_MODULE = """
from pydantic import Field
from guidestack.engine.stage import StageOptions


class HalfOptions(StageOptions):
    weight: float = Field(1.0, ge=0.0)

    def prior_problems(self, prior):
        return [("weight", "too heavy")] if self.weight > prior.num_train_timesteps else []
"""

COMMAND_MODULE = """
def configure(parser):
    parser.add_argument("--times", type=int, default=1)

def run(args, registry):
    print("hello " * args.times)
    return 0
"""


@pytest.fixture
def lazy_plugin(tmp_path, monkeypatch):
    for name, text in [
        ("lazy_stage", STAGE_MODULE),
        ("lazy_options", OPTIONS_MODULE),
        ("lazy_command", COMMAND_MODULE),
    ]:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_lazy_stage_is_validated_without_importing_it(lazy_plugin):
    registry = Registry()
    registry.add_stage(
        "lazy_stage:Half",
        name="half",
        description="x0 halved.",
        options="lazy_options:HalfOptions",
        hooks=("transform_x0",),
    )
    recipe = load_recipe({"description": "d", "stage": [{"use": "half", "weight": 2.0}]}, registry)
    assert "lazy_stage" not in sys.modules
    assert recipe.stages[0].weight == 2.0
    facts = PriorFacts("p", "gaussian", 1, 64)
    with pytest.raises(RecipeError, match="too heavy"):
        recipe.for_prior(facts, registry)
    assert "lazy_stage" not in sys.modules
    assert registry.stage("half").__name__ == "Half" and "lazy_stage" in sys.modules


def test_a_lazy_entry_that_disagrees_with_its_class_is_refused_on_import(lazy_plugin):
    registry = Registry()
    registry.add_stage(
        "lazy_stage:Half",
        name="half",
        description="something else",
        options="lazy_options:HalfOptions",
        hooks=("transform_x0",),
    )
    with pytest.raises(PluginError, match="description"):
        registry.stage("half")
    registry = Registry()
    registry.add_stage(
        "lazy_stage:Half", name="half", description="x0 halved.", options="lazy_options:HalfOptions"
    )
    with pytest.raises(PluginError, match="hooks"):
        registry.stage("half")
    registry = Registry()
    registry.add_stage("lazy_stage:Nope", name="nope", description="", options=None)
    with pytest.raises(PluginError, match="cannot be imported"):
        registry.stage("nope")
    with pytest.raises(PluginError, match="name= and description="):
        registry.add_stage("lazy_stage:Half")


def test_a_lazy_command_is_listed_and_runs(lazy_plugin, capsys):
    from guidestack.cli.main import build_parser

    registry = load_registry(entry_points=False)
    registry.current_plugin = "lazy"
    registry.add_command("say-hello", "says hello", "lazy_command")
    assert "lazy_command" not in sys.modules
    parser = build_parser(registry)
    assert "say-hello" in parser.format_help() and "lazy_command" not in sys.modules
    args = parser.parse_args(["say-hello", "--times", "2"])
    entry = registry.get("command", "say-hello")
    assert entry.obj[1](args, registry) == 0
    assert capsys.readouterr().out.split() == ["hello", "hello"]
    with pytest.raises(PluginError, match="pass no run"):
        registry.add_command("other", "d", "lazy_command", lambda a, r: 0)
