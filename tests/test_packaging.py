"""The wheel carries every module, recipe, shipped prior and entry point (the three top-level
folders map into one import package through package-dir; a missed subpackage would only show
up for users who install the wheel)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

FOLDERS = {
    "engine": "guidestack/engine",
    "plugins": "guidestack/plugins",
    "recipes": "guidestack/recipes",
    "src/guidestack": "guidestack",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        cwd=build,
        env={**__import__("os").environ, "PIP_NO_INPUT": "1"},
    )
    (path,) = out.glob("guidestack-*.whl")
    return zipfile.ZipFile(path)


def expected_files() -> set[str]:
    """Every .py, .toml and shipped data file under the mapped folders, as wheel paths."""
    names = set()
    for folder, target in FOLDERS.items():
        root = REPO / folder
        for path in root.rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if (
                path.suffix in (".py", ".toml", ".pt", ".json")
                and "tests" not in path.relative_to(root).parts
            ):
                names.add(f"{target}/{path.relative_to(root).as_posix()}")
    return names


def test_wheel_contains_every_module_recipe_and_prior(wheel):
    inside = set(wheel.namelist())
    missing = sorted(expected_files() - inside)
    assert not missing, (
        f"not in the wheel (add the subpackage to pyproject.toml packages): {missing}"
    )
    assert "guidestack/recipes/restore.toml" in inside
    assert "guidestack/plugins/priors/data/gaussian-faces-64.pt" in inside


def test_wheel_declares_console_script(wheel):
    (ep,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    text = wheel.read(ep).decode()
    assert "[console_scripts]" in text and "guidestack = guidestack.cli.main:main" in text


def test_every_package_folder_is_listed():
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    for folder, target in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            name = (
                ".".join([target.replace("/", "."), *rel.parts])
                if rel.parts
                else target.replace("/", ".")
            )
            assert name in listed, f"{init.parent} is a package but {name} is not in pyproject.toml"


def test_python_dash_m_runs():
    result = subprocess.run(
        [sys.executable, "-m", "guidestack", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "guidestack" in result.stdout
