"""A real third-party plugin package, end to end: examples/guidestack-plugin-example is
pip-installed (offline, from its folder) into a temporary target directory, and fresh
``guidestack`` processes that see it through PYTHONPATH list it, explain it, validate and run its
recipe, run the command it contributes, run its own tests and block it.  Nothing is installed into the running environment, so
the rest of the suite never sees the plugin.

The CLI processes are independent, so they run concurrently (each one imports torch)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, LIGHT_CLI_SCRIPT, REPO

from guidestack.engine import hookspecs
from guidestack.engine.errors import PluginError
from guidestack.engine.recipe import recipe_index
from guidestack.engine.registry import load_registry

EXAMPLE = REPO / "examples" / "guidestack-plugin-example"
#: the listing commands, which must not import torch with the (lazily registering) example
LIGHT_COMMANDS = [
    ["--help"],
    ["recipes", "--json"],
    ["plugins"],
    ["plugins", "--json"],
    ["validate", "symmetric-faces"],
]
TIMEOUT = 600


def pip_install(package: Path, target: Path) -> None:
    """``pip install`` a local package into ``target`` without network, deps or build isolation."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail(
            "setuptools must be installed in the test environment to build plugin packages offline"
        )
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    copy = target.parent / f"src-{package.name}"
    shutil.copytree(
        package,
        copy,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "-q",
        "--target",
        str(target),
        str(copy),
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def environment(*paths: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("GUIDESTACK_BLOCK_PLUGINS", "PYTHONPATH")
    }
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    env.update(extra)
    return env


def write_mirror_pair(folder: Path) -> tuple[Path, Path]:
    """An example face and the same face made exactly left-right symmetric (left half mirrored)."""
    from PIL import Image

    face = Image.open(EXAMPLES / "astronaut.png").convert("RGB")
    width, height = face.size
    left = face.crop((0, 0, width // 2, height))
    symmetric = Image.new("RGB", (2 * (width // 2), height))
    symmetric.paste(left, (0, 0))
    symmetric.paste(left.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (width // 2, 0))
    folder.mkdir(parents=True, exist_ok=True)
    face.save(folder / "face.png")
    symmetric.save(folder / "symmetric.png")
    return folder / "face.png", folder / "symmetric.png"


def write_future_plugin(site: Path) -> None:
    """A hand-made installed distribution whose plugin needs a hook API newer than ours."""
    dist = site / "guidestack_future-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: guidestack-future\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[guidestack]\nfuture = guidestack_future_plugin\n")
    (site / "guidestack_future_plugin.py").write_text(
        f"hook_api_version = {hookspecs.HOOK_API_VERSION + 1}\n\n"
        "def register(registry):\n    raise AssertionError('must not be registered')\n"
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Install the example, then run every CLI check concurrently; results by name."""
    root = tmp_path_factory.mktemp("third_party")
    site = root / "site"
    pip_install(EXAMPLE, site)
    tests_copy = root / "example-tests"
    shutil.copytree(
        EXAMPLE,
        tests_copy,
        ignore=shutil.ignore_patterns("src", "build", "*.egg-info", "__pycache__"),
    )
    gs = [sys.executable, "-m", "guidestack"]
    face = str(EXAMPLES / "astronaut_degraded.png")
    pair = [str(p) for p in write_mirror_pair(root / "pair")]
    jobs = {
        "plugins": (gs + ["plugins", "--json"], environment(site)),
        "blocked": (
            gs + ["plugins", "--json"],
            environment(site, GUIDESTACK_BLOCK_PLUGINS="example"),
        ),
        "explain": (gs + ["explain", "mirror-symmetry", "--json"], environment(site)),
        "validate": (
            gs + ["validate", "symmetric-faces", "--prior", "gaussian-faces-64"],
            environment(site),
        ),
        "run": (
            gs
            + ["run", "symmetric-faces", face, "-o", str(root / "out"), "--steps", "8", "--quiet"],
            environment(site),
        ),
        "blocked-run": (
            gs + ["validate", "symmetric-faces"],
            environment(site, GUIDESTACK_BLOCK_PLUGINS="example"),
        ),
        "command": (gs + ["mirror-score", *pair, "--json"], environment(site)),
        "blocked-command": (
            gs + ["mirror-score", *pair],
            environment(site, GUIDESTACK_BLOCK_PLUGINS="example"),
        ),
        "tests": (
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            environment(site),
        ),
        "light": (
            [sys.executable, "-c", LIGHT_CLI_SCRIPT, json.dumps(LIGHT_COMMANDS)],
            environment(site),
        ),
    }
    processes = {
        name: subprocess.Popen(
            cmd,
            env=env,
            cwd=tests_copy if name == "tests" else root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (cmd, env) in jobs.items()
    }
    results = {}
    try:
        for name, proc in processes.items():
            out, err = proc.communicate(timeout=TIMEOUT)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                proc.kill()
    results["out"] = root / "out"  # type: ignore[assignment]
    return results


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def test_plugins_json_lists_the_example(outcomes):
    listing = {p["name"]: p for p in json.loads(ok(outcomes["plugins"]))}
    example = listing["example"]
    assert example["module"] == "guidestack_example.plugin"
    assert example["version"] == "0.1.0"
    assert example["hook_api_version"] == 1
    stages = {s["name"]: s for s in example["stages"]}
    assert stages["mirror-symmetry"]["hooks"] == ["guidance_loss"]
    assert stages["ilvr"]["hooks"] == ["project"]
    sigma = stages["mirror-symmetry"]["options"]["sigma"]
    assert sigma == {
        "type": "float",
        "required": False,
        "default": 0.0,
        "constraints": {"ge": 0.0, "le": 16.0},
        "description": sigma["description"],
    }
    assert stages["ilvr"]["options"]["window"]["default"] == [-1, 1000]
    assert [c["name"] for c in example["commands"]] == ["mirror-score"]
    assert example["broken"] is None
    assert "builtin" in listing


def test_explain_shows_options_and_recipes(outcomes):
    info = json.loads(ok(outcomes["explain"]))
    assert info["plugin"]["name"] == "example" and info["hooks"][0]["name"] == "guidance_loss"
    assert info["options"]["extent"]["constraints"] == {"gt": 0.0, "le": 1.0}
    assert info["recipes"] == [
        {"name": "symmetric-faces", "plugin": "example", "where": ["stage[1]"]}
    ]


def test_recipe_validates_with_per_prior_defaults(outcomes):
    out = ok(outcomes["validate"])
    resolved = json.loads(out.split("\n", 1)[1])
    assert [s["use"] for s in resolved["stage"]] == ["ilvr", "mirror-symmetry"]
    assert resolved["stage"][0]["factor"] == 4  # [per_prior.gaussian.stage.ilvr]


def test_recipe_runs_on_the_offline_prior(outcomes):
    ok(outcomes["run"])
    out: Path = outcomes["out"]  # type: ignore[assignment]
    assert (out / "astronaut_degraded.png").is_file()
    assert (out / "astronaut_degraded_compare.png").is_file()
    report = json.loads((out / "run.json").read_text())
    assert report["inputs"][0]["status"] == "done"
    assert report["recipe"]["stage"][1]["use"] == "mirror-symmetry"


def test_the_plugin_command_runs(outcomes):
    """`guidestack mirror-score`, contributed by the installed example through add_command."""
    rows = json.loads(ok(outcomes["command"]))
    assert [Path(r["path"]).name for r in rows] == ["face.png", "symmetric.png"]
    face, symmetric = (r["score"] for r in rows)
    assert symmetric == 0.0 and 1e-3 < face < 4.0
    from PIL import Image

    assert rows[0]["size"] == list(Image.open(EXAMPLES / "astronaut.png").size)
    assert outcomes["command"].stderr == ""  # no plugin warnings


def test_example_package_tests_pass_with_guidestack_fixtures(outcomes):
    out = ok(outcomes["tests"])
    assert " passed" in out and "failed" not in out


def test_listing_commands_import_no_torch_with_the_example(outcomes):
    """The example registers lazily, so listing and validating never import its stages."""
    found = json.loads(ok(outcomes["light"]).splitlines()[-1])
    assert found == {" ".join(c): [0, []] for c in LIGHT_COMMANDS}


def test_blocked_plugin_is_gone(outcomes):
    listing = json.loads(ok(outcomes["blocked"]))
    assert "example" not in {p["name"] for p in listing}
    blocked = outcomes["blocked-run"]
    assert blocked.returncode == 2
    assert "unknown recipe 'symmetric-faces'" in blocked.stderr
    command = outcomes["blocked-command"]
    assert command.returncode == 2 and "invalid choice: 'mirror-score'" in command.stderr


def test_plugin_for_a_newer_hook_api_is_skipped_clearly(tmp_path, monkeypatch, capsys):
    """The CLI warns (one line naming the plugin, the versions and how to block it) and works;
    blocking it silences the warning."""
    from guidestack.cli.main import main
    from guidestack.engine import registry as registry_module

    write_future_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_DEFAULT", None)  # the CLI's process-wide registry
    monkeypatch.delenv("GUIDESTACK_BLOCK_PLUGINS", raising=False)
    try:
        assert main(["recipes"]) == 0
        captured = capsys.readouterr()
        assert "restore" in captured.out
        (line,) = captured.err.splitlines()
        assert line.startswith("warning: plugin 'future' (guidestack_future_plugin) was skipped")
        assert f"built for guidestack hook API version {hookspecs.HOOK_API_VERSION + 1}" in line
        assert f"provides hook API version {hookspecs.HOOK_API_VERSION}" in line
        assert "GUIDESTACK_BLOCK_PLUGINS=future" in line
        (broken,) = load_registry(blocked=set()).broken
        assert (broken.name, broken.phase) == ("future", "hook API version")
        registry = load_registry(blocked={"future"})
        assert registry.broken == [] and "restore" in recipe_index(registry)
    finally:
        sys.modules.pop("guidestack_future_plugin", None)


@pytest.mark.parametrize("value", ["2", 0, True])
def test_invalid_declared_api_version_is_an_error(value):
    from guidestack.engine.registry import check_api_version

    module = type(sys)("bad_plugin")
    module.hook_api_version = value
    with pytest.raises(PluginError, match="must be a positive integer"):
        check_api_version("bad", module)
