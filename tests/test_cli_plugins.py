"""``guidestack explain`` and ``guidestack new-plugin`` (whose package must pass its own tests
out of the box), and the options schema ``guidestack plugins --json`` shares with explain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Literal

import pytest
from pydantic import BaseModel, Field
from test_third_party import TIMEOUT, environment, pip_install

from guidestack.cli.main import main
from guidestack.cli.scaffold import check_name, scaffold
from guidestack.engine.catalog import explain, hook_summary, options_schema, type_name
from guidestack.engine.errors import UsageError
from guidestack.engine.hookspecs import RUN_HOOKS


class Example(BaseModel):
    use: str = "x"
    rate: float = Field(0.5, gt=0, le=2, description="how fast")
    mode: Literal["a", "b"] = "a"
    window: tuple[int, int] | None = None
    count: int = Field(description="required")


def test_options_schema_is_plain_stable_json():
    schema = options_schema(Example)
    assert list(schema) == ["rate", "mode", "window", "count"]  # declaration order, no `use`
    assert schema["rate"] == {
        "type": "float",
        "required": False,
        "default": 0.5,
        "constraints": {"gt": 0, "le": 2},
        "description": "how fast",
    }
    assert schema["mode"]["type"] == '"a" | "b"'
    assert schema["window"]["type"] == "tuple[int, int] | None"
    assert schema["count"]["required"] is True and schema["count"]["default"] is None
    assert json.loads(json.dumps(schema)) == schema


def test_type_names_of_plugin_references(registry):
    options = registry.get("stage", "smooth-semantics").options
    assert type_name(options.model_fields["restorer"].annotation) == "restorer reference"


def test_every_run_hook_has_a_summary():
    for hook in RUN_HOOKS:
        summary = hook_summary(hook)
        assert len(summary) > 20 and "``" not in summary, hook


def test_plugins_json_options_are_typed(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    builtin = listing["builtin"]
    stage = {s["name"]: s for s in builtin["stages"]}["smooth-semantics"]
    assert stage["options"]["weight"] == {
        "type": "float",
        "required": False,
        "default": 1.0,
        "constraints": {"ge": 0.0},
        "description": "multiplies this stage's loss",
    }
    assert stage["options"]["restorer"]["default"] == {"use": "gaussian-blur"}
    assert "hook_api_version" in builtin


def test_explain_stage_text(capsys):
    assert main(["explain", "smooth-semantics"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stage smooth-semantics")
    assert "guidance_loss" in out and hook_summary("guidance_loss") in out
    assert "weight" in out and ">= 0.0" in out and "restorer reference" in out
    assert "restore (builtin): stage[0]" in out


def test_explain_restorer_finds_nested_uses(capsys):
    assert main(["explain", "gaussian-blur", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "restorer"
    assert info["options"]["sigma"]["constraints"] == {"gt": 0, "le": 50}
    where = {r["name"]: r["where"] for r in info["recipes"]}
    assert where["restore"] == ["stage[0].restorer"]


def test_explain_plugin_lists_contents(capsys):
    assert main(["explain", "builtin", "--kind", "plugin"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plugin builtin") and "smooth-semantics" in out and "restore" in out


def test_explain_unknown_name_suggests(capsys):
    assert main(["explain", "smoth"]) == 2
    err = capsys.readouterr().err
    assert "nothing named 'smoth'" in err and "smooth-semantics" in err


def test_explain_all_registered_names(registry):
    """explain works for every registered thing (no crash on any options model)."""
    for kind in ("stage", "restorer", "degradation", "prior", "prior_backend"):
        for name in registry.names(kind):
            (info,) = [i for i in explain(registry, name, kind)]
            json.dumps(info)
            assert info["name"] == name


@pytest.mark.parametrize(
    "name", ["Sharpen", "9lives", "a--b", "with_underscore", "x" * 40, "trailing-"]
)
def test_new_plugin_refuses_bad_names(tmp_path, name, capsys):
    assert main(["new-plugin", name, "-o", str(tmp_path)]) == 2
    assert "plugin name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_new_plugin_refuses_taken_names_and_existing_folders(tmp_path, registry):
    with pytest.raises(UsageError, match="stage 'smooth-semantics'"):
        check_name("smooth-semantics", registry)
    with pytest.raises(UsageError, match="plugin 'builtin'"):
        check_name("builtin", registry)
    scaffold("blur", tmp_path)
    assert main(["new-plugin", "blur", "-o", str(tmp_path)]) == 2


def test_new_plugin_package_installs_and_its_tests_pass(tmp_path, capsys):
    assert main(["new-plugin", "face-smooth", "-o", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.split()
    root = tmp_path / "guidestack-face-smooth"
    assert "guidestack-face-smooth/src/guidestack_face_smooth/plugin.py" in listed
    assert (root / "src" / "guidestack_face_smooth" / "recipes" / "face-smooth-demo.toml").is_file()
    site = tmp_path / "site"
    pip_install(root, site)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        cwd=root,
        env=environment(site),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "5 passed" in tests.stdout
    assert not (root / "build").exists()  # built from a copy: the package folder stays clean
    assert os.listdir(site)


def test_new_plugin_package_is_lint_clean(tmp_path):
    """With its own ruff settings; long names must not push lines past the line length."""
    root, _ = scaffold("abcdefghij-abcdefghij-abcdefghij", tmp_path)
    for args in (["check"], ["format", "--check"]):
        cmd = [sys.executable, "-m", "ruff", *args, "--no-cache", "."]  # its own [tool.ruff]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stdout + done.stderr
