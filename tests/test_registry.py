"""The registry: hooks mean what they say, and a broken plugin never takes the others down.

Run hooks are called by the engine itself in recipe order, so pluggy's ordering and wrapping
options (``tryfirst``, ``trylast``, ``hookwrapper``, ``wrapper``) would be accepted and silently
ignored; they are refused when a stage is registered and when a run's stages are assembled.
Broken third-party plugins (import error, ``sys.exit`` at import, a ``register`` that raises or
exits, a clashing name, a newer hook API) are recorded on ``registry.broken`` with their name and
the way to block them, rolled back, and everything else keeps working, in Python and in the CLI.

Fake plugins are real installed distributions: a ``*.dist-info`` folder with an
``entry_points.txt`` next to the module, on a temporary ``sys.path`` entry.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from guidestack.engine import registry as registry_module
from guidestack.engine.errors import PluginError, RecipeError
from guidestack.engine.hookspecs import HOOK_API_VERSION, hookimpl
from guidestack.engine.recipe import recipe_index
from guidestack.engine.registry import Registry, load_registry
from guidestack.engine.stage import Stage
from guidestack.engine.stageset import StageSet

# --- run hooks: ordering and wrapping options are refused ------------------------------------


def stage_with(option: str) -> type[Stage]:
    """A stage whose ``update_latent`` carries a pluggy option the engine cannot honour."""
    if option in ("hookwrapper", "wrapper"):

        class Wrapping(Stage):
            name = f"uses-{option}"

            @hookimpl(**{option: True})
            def update_latent(self, ctx, state):
                yield

        return Wrapping

    class Ordering(Stage):
        name = f"uses-{option}"

        @hookimpl(**{option: True})
        def update_latent(self, ctx, state):
            state.x_t = state.x_t + 1

    return Ordering


OPTIONS = ("tryfirst", "trylast", "hookwrapper", "wrapper")


@pytest.mark.parametrize("option", OPTIONS)
def test_add_stage_refuses_ordering_and_wrapping_options(option):
    registry = Registry()
    registry.current_plugin = "someplugin"
    cls = stage_with(option)
    with pytest.raises(PluginError) as caught:
        registry.add_stage(cls)
    message = str(caught.value)
    assert f"{cls.__module__}.{cls.__qualname__}" in message  # the stage class
    assert "'someplugin'" in message  # the plugin
    assert "update_latent" in message and f"{option}=True" in message  # the hook and the option
    assert "recipe" in message and "[[stage]]" in message  # how to get the effect
    assert registry.get("stage", cls.name) is None


@pytest.mark.parametrize("option", OPTIONS)
def test_stage_set_refuses_stages_that_bypassed_the_registry(option):
    cls = stage_with(option)
    with pytest.raises(RecipeError) as caught:
        StageSet([cls(cls.Options(use=cls.name))], "<test>")
    assert caught.value.problems[0][0] == "stage[0]"
    message = caught.value.problems[0][1]
    assert cls.__qualname__ in message and "update_latent" in message and option in message


def test_misspelt_unmarked_and_renamed_hooks_are_refused():
    class Misspelt(Stage):
        name = "misspelt"

        @hookimpl
        def update_latnet(self, ctx, state):
            pass

    class Unmarked(Stage):
        name = "unmarked"

        def project(self, ctx, state):  # no @hookimpl: pluggy would never call it
            pass

    class Renamed(Stage):
        name = "renamed"

        @hookimpl(specname="project")
        def paste(self, ctx, state):
            pass

    class PackageHook(Stage):
        name = "package-hook"

        @hookimpl
        def register(self, registry):
            pass

    class WrongArgument(Stage):
        name = "wrong-argument"

        @hookimpl
        def project(self, stat):
            pass

    expected = {
        WrongArgument: ["hook project takes stat", "it passes ctx, state"],
        Misspelt: ["update_latnet", "did you mean update_latent"],
        Unmarked: ["project", "@hookimpl"],
        Renamed: ["specname", "name the method project"],
        PackageHook: ["register", "module-level function"],
    }
    for cls, fragments in expected.items():
        with pytest.raises(PluginError) as caught:
            Registry().add_stage(cls)
        for fragment in fragments:
            assert fragment in str(caught.value), (cls, str(caught.value))
        with pytest.raises(RecipeError):
            StageSet([cls(cls.Options(use=cls.name))])


def test_plain_stages_and_optionalhook_still_work(registry):
    class Plain(Stage):
        name = "plain-ok"

        @hookimpl(optionalhook=True)
        def project(self, state):
            state.x_prev = state.x_prev * 0

        def helper(self):  # ordinary methods are fine
            return 1

    local = Registry()
    local.add_stage(Plain)
    assert local.get("stage", "plain-ok").hooks == ("project",)
    stages = StageSet([Plain(Plain.Options(use="plain-ok"))])
    assert stages.owners("project")[0].id == "plain-ok"


def test_validation_costs_little_per_stage_set():
    """Assembling a run's stages stays cheap: validation is a small part of building it."""
    import time

    class A(Stage):
        name = "a"

        @hookimpl
        def project(self, state):
            pass

    from guidestack.engine.stage import hook_problems

    stages = [A(A.Options(use="a", id=f"a{i}")) for i in range(4)]
    build = validate = float("inf")
    for _ in range(5):  # interleaved, best of 5
        start = time.perf_counter()
        StageSet(stages)
        build = min(build, time.perf_counter() - start)
        start = time.perf_counter()
        for stage in stages:
            hook_problems(type(stage))
        validate = min(validate, time.perf_counter() - start)
    assert validate < build


# --- broken plugins --------------------------------------------------------------------------


def install(site: Path, name: str, source: str, *, module: str | None = None) -> str:
    """Install a one-module distribution whose ``guidestack`` entry point ``name`` names it."""
    module = module or f"gs_test_plugin_{name.replace('-', '_')}"
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[guidestack]\n{name} = {module}\n")
    (site / f"{module}.py").write_text(source)
    return module


GOOD = """
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import Stage


class Good(Stage):
    name = "good-stage"

    @hookimpl
    def project(self, state):
        pass


def register(registry):
    registry.add_stage(Good)
"""

CASES = {
    "import-error": ("import no_such_module_anywhere\n", "import", "ModuleNotFoundError"),
    "exits": ("import sys\nsys.exit(0)\n", "import", "sys.exit(0)"),
    "raises": (
        GOOD.replace("good-stage", "half-stage").replace("Good", "Half")
        + "    raise RuntimeError('register failed half way')\n",
        "register",
        "RuntimeError: register failed half way",
    ),
    "exits-in-register": (
        "import sys\n\ndef register(registry):\n    sys.exit(3)\n",
        "register",
        "sys.exit(3)",
    ),
    "clash": (
        GOOD.replace("good-stage", "smooth-semantics"),
        "register",
        "stage name 'smooth-semantics' is registered twice",
    ),
    "recipe-clash": (
        "from pathlib import Path\n\ndef register(registry):\n"
        "    registry.add_recipes(Path(__file__).parent / 'gs_test_recipes')\n",
        "register",
        "recipe name 'restore' is provided by plugin 'builtin' and by plugin 'recipe-clash'",
    ),
    "bad-signature": (
        "from guidestack.engine.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef register(reg):\n    pass\n",
        "plugin module",
        "register",
    ),
    "module-hook": (
        "from guidestack.engine.hookspecs import hookimpl\n\n"
        "def register(registry):\n    pass\n\n"
        "@hookimpl\ndef update_latent(ctx, state):\n    pass\n",
        "plugin module",
        "run hooks are methods of a Stage subclass",
    ),
    "no-register": ("x = 1\n", "plugin module", "no register(registry) function"),
    "future": (
        f"hook_api_version = {HOOK_API_VERSION + 1}\n\n"
        "def register(registry):\n    raise AssertionError('must not be called')\n",
        "hook API",
        f"hook API version {HOOK_API_VERSION + 1}",
    ),
    "bad-command": (
        "def register(registry):\n"
        "    registry.add_command('run', 'shadows run', lambda p: None, lambda a, r: 0)\n",
        "register",
        "command 'run': 'run' is a guidestack command",
    ),
    "wrapper": (
        GOOD.replace("@hookimpl\n", "@hookimpl(hookwrapper=True)\n").replace(
            "pass\n", "yield\n", 1
        ),
        "register",
        "hookwrapper=True",
    ),
}


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh folder on sys.path for fake installed plugins; their modules are forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("GUIDESTACK_BLOCK_PLUGINS", raising=False)
    monkeypatch.setattr(registry_module, "_DEFAULT", None)  # the CLI's process-wide registry
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("gs_test_plugin_"):
            del sys.modules[name]


@pytest.mark.parametrize("case", list(CASES))
def test_broken_plugin_is_recorded_and_the_others_keep_working(site, case):
    source, phase, error = CASES[case]
    install(site, "good", GOOD)
    module = install(site, case, source)
    (site / "gs_test_recipes").mkdir()
    (site / "gs_test_recipes" / "restore.toml").write_text('description = "shadows restore"\n')
    registry = load_registry()
    (broken,) = registry.broken
    assert broken.name == case and broken.entry_point == module
    assert phase in broken.phase and error in broken.error, broken
    assert f"GUIDESTACK_BLOCK_PLUGINS={case}" in broken.message()
    assert "\n" not in broken.message()
    assert f"plugin '{case}'" in broken.message()
    # nothing of the broken plugin is left, everything else is there
    assert case not in registry.plugins
    assert not any(e.plugin == case for table in registry.entries.values() for e in table.values())
    assert registry.get("stage", "half-stage") is None
    assert registry.get("stage", "smooth-semantics").plugin == "builtin"
    assert registry.get("stage", "good-stage").plugin == "good"
    assert recipe_index(registry)["restore"][0] == "builtin"
    # blocking it gives a clean registry
    assert load_registry(blocked={case}).broken == []


def test_keyboard_interrupt_in_a_plugin_is_not_swallowed(site):
    install(site, "interrupts", "def register(registry):\n    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_registry()


def test_duplicate_entry_point_name_is_a_broken_plugin(site):
    install(site, "twin", GOOD, module="gs_test_plugin_twin_a")
    other = site / "other"
    other.mkdir()
    sys.path.insert(1, str(other))
    try:
        install(other, "twin", GOOD.replace("good-stage", "twin-b"), module="gs_test_plugin_twin_b")
        registry = load_registry()
    finally:
        sys.path.remove(str(other))
    assert [b.name for b in registry.broken] == ["twin"]
    assert "twin" in registry.plugins  # the first one found is loaded


def test_cli_warns_once_per_broken_plugin_and_keeps_working(site, capsys):
    """Hardening: sys.exit(0) at import used to make every command exit 0 silently; a raising
    register() used to give 'unexpected RuntimeError'."""
    from guidestack.cli.main import main

    install(site, "exits", CASES["exits"][0])
    install(site, "raises", CASES["raises"][0])
    install(site, "good", GOOD)
    assert main(["recipes"]) == 0
    captured = capsys.readouterr()
    assert "restore" in captured.out
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2, captured.err
    assert warnings[0].startswith("warning: plugin 'exits'")
    assert "sys.exit(0)" in warnings[0] and "GUIDESTACK_BLOCK_PLUGINS=exits" in warnings[0]
    assert warnings[1].startswith("warning: plugin 'raises'")
    assert "RuntimeError: register failed half way" in warnings[1]
    assert "GUIDESTACK_BLOCK_PLUGINS=raises" in warnings[1]
    assert "unexpected" not in captured.err


@pytest.mark.parametrize("case", ["exits", "raises"])
def test_cli_survives_each_hardening_case_alone(site, capsys, case):
    from guidestack.cli.main import main

    install(site, case, CASES[case][0])
    assert main(["validate", "restore"]) == 0
    captured = capsys.readouterr()
    assert "valid" in captured.out
    assert captured.err.startswith(f"warning: plugin '{case}'"), captured.err
    assert f"GUIDESTACK_BLOCK_PLUGINS={case}" in captured.err and "unexpected" not in captured.err


def test_plugins_command_lists_broken_plugins(site, capsys):
    from guidestack.cli.main import main

    module = install(site, "exits", CASES["exits"][0])
    install(site, "good", GOOD)
    assert main(["plugins", "--json"]) == 0
    listing = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listing["good"]["broken"] is None and listing["builtin"]["broken"] is None
    broken = listing["exits"]["broken"]
    assert listing["exits"]["module"] == module and listing["exits"]["stages"] == []
    assert broken["phase"] == "import" and "sys.exit(0)" in broken["error"]
    assert broken["block"] == "GUIDESTACK_BLOCK_PLUGINS=exits"

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "exits" in out and "BROKEN" in out and "GUIDESTACK_BLOCK_PLUGINS=exits" in out


def test_plugin_authors_see_broken_plugins_in_their_test_run(site):
    """The gs_registry fixture warns, so a plugin's own tests say why its stages are missing."""
    import os
    import subprocess

    install(site, "exits", CASES["exits"][0])
    tests = site / "tests"
    tests.mkdir()
    (tests / "test_it.py").write_text(
        "def test_registry(gs_registry):\n"
        "    assert [b.name for b in gs_registry.broken] == ['exits']\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GUIDESTACK_BLOCK_PLUGINS"}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        capture_output=True,
        text=True,
        env=env,
        cwd=site,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plugin 'exits' (gs_test_plugin_exits) was skipped" in done.stdout
    assert "GUIDESTACK_BLOCK_PLUGINS=exits" in done.stdout


# --- commands contributed by plugins ---------------------------------------------------------

CORE_COMMANDS = ("run", "recipes", "plugins", "validate", "explain", "new-plugin")


def test_core_commands_are_reserved():
    from guidestack.cli.main import build_parser

    parser = build_parser(Registry())
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == set(CORE_COMMANDS) == set(registry_module.CORE_COMMANDS)


@pytest.mark.parametrize("name", CORE_COMMANDS)
def test_plugin_command_cannot_shadow_a_core_command(name):
    registry = Registry()
    registry.current_plugin = "shadow"
    with pytest.raises(PluginError, match=f"plugin 'shadow'.*'{name}' is a guidestack command"):
        registry.add_command(name, "x", lambda parser: None, lambda args, reg: 0)


def test_plugin_commands_clash_by_name_and_bad_names_are_refused():
    registry = Registry()
    registry.current_plugin = "first"
    registry.add_command("frobnicate", "x", lambda parser: None, lambda args, reg: 0)
    registry.current_plugin = "second"
    with pytest.raises(PluginError, match="plugin 'first' and by plugin 'second'"):
        registry.add_command("frobnicate", "y", lambda parser: None, lambda args, reg: 0)
    for bad in ("", "Two Words", "--flag"):
        with pytest.raises(PluginError, match="plugin 'second'"):
            registry.add_command(bad, "y", lambda parser: None, lambda args, reg: 0)


def test_command_whose_configure_fails_is_refused_at_registration():
    registry = Registry()
    registry.current_plugin = "badargs"

    def configure(parser):
        parser.add_argument("--x")
        parser.add_argument("--x")  # argparse: conflicting option string

    with pytest.raises(PluginError, match="plugin 'badargs'.*configure"):
        registry.add_command("badargs", "y", configure, lambda args, reg: 0)


def test_stage_run_unaffected_by_validation(registry):
    """A registry-built run still runs its stages in recipe order (the validation is not a
    second dispatcher)."""
    from guidestack.testing import run_trajectory, tiny_prior

    calls: list[str] = []

    def make(name):
        class Rec(Stage):
            @hookimpl
            def project(self, state):
                calls.append(self.id)

        Rec.name = name
        return Rec

    local = load_registry(blocked=set(), entry_points=False)
    for name in ("r-b", "r-a"):
        local.add_stage(make(name))
    run_trajectory(
        {"sampler": {"kind": "ddpm", "steps": 2}, "stage": [{"use": "r-b"}, {"use": "r-a"}]},
        tiny_prior(8),
        torch.zeros(1, 3, 8, 8),
        registry=local,
    )
    assert calls == ["r-b", "r-a"] * 2
