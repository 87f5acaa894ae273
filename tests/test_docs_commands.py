"""Every command block of README.md and docs/*.md runs as written, as a new user would type it
(from the repository's root, with the documented inputs), and every example `make demo` runs.

Conventions the docs follow (checked here too):

* a ```bash block holds commands to type; each block runs in one shell in a fresh folder that
  holds the repository's `examples/` (so outputs never land in the checkout);
* a ```bash block whose first line is ``# not run: <why>`` needs something the tests cannot
  have (internet, a GPU, a running server, a package install) and says so;
* synopses with placeholders (``INPUT...``, ``[--seed S]``) and sample outputs are ```text;
* a fence that holds a command line is always labelled (bash or text).
* ```python blocks of README.md run too (docs/python.md has its own test).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
COMMAND = re.compile(
    r"^\s*(\$ )?(guidestack|make|python|pip|pytest|torchrun|srun|accelerate)(\s|$)"
)
NOT_RUN = "# not run:"
#: the README's two one-command blocks, checked elsewhere: the demo's own commands run below
#: (its `make setup` is what CI runs first), and `make test` is this test suite
COVERED = {"make demo": "test_make_demo_runs runs its commands", "make test": "the test suite"}


def fences(page: Path) -> list[tuple[str, str]]:
    return FENCE.findall(page.read_text(encoding="utf-8"))


def command_blocks() -> list[tuple[Path, int, str]]:
    out = []
    for page in PAGES:
        for index, (lang, body) in enumerate(fences(page)):
            if lang in ("bash", "sh"):
                out.append((page, index, body))
    return out


def test_every_command_fence_is_labelled():
    unlabelled = []
    for page in PAGES:
        for lang, body in fences(page):
            if not lang and any(COMMAND.match(line) for line in body.splitlines()):
                unlabelled.append(f"{page.relative_to(REPO)}: {body.splitlines()[0]}")
    assert not unlabelled, "label these fences bash (to run) or text (a synopsis):\n" + "\n".join(
        unlabelled
    )


def test_skipped_blocks_say_why():
    for page, index, body in command_blocks():
        first = body.strip().splitlines()[0] if body.strip() else ""
        if first.startswith("# not run"):
            assert first.startswith(NOT_RUN) and len(first) > len(NOT_RUN) + 5, (page, index)


def _workspace(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    return work


def _environment() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.parametrize(
    ("page", "index", "body"),
    command_blocks(),
    ids=[f"{p.name}#{i}" for p, i, _ in command_blocks()],
)
def test_command_block_runs_as_written(page, index, body, tmp_path):
    if body.strip().startswith(NOT_RUN):
        pytest.skip(body.strip().splitlines()[0])
    if body.strip() in COVERED:
        pytest.skip(COVERED[body.strip()])
    work = _workspace(tmp_path)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body],
        cwd=work,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{page.name} block {index} failed:\n{body}\n{done.stderr[-3000:]}"


def test_make_demo_runs(tmp_path):
    """The demo's own commands (after `make setup`, which CI runs) work and say what they show."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^demo: setup\n((?:\t.*\n)+)", makefile, re.M).group(1)
    venv = str(Path(sys.executable).parent.parent)
    commands = [
        line.strip().replace("$(VENV)", venv).replace("$(PY)", sys.executable)
        for line in recipe.splitlines()
    ]
    work = _workspace(tmp_path)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(commands)],
        cwd=work,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kept exactly" in done.stdout and "PSNR" in done.stdout


def test_readme_python_runs(monkeypatch):
    monkeypatch.chdir(REPO)
    for lang, body in fences(REPO / "README.md"):
        if lang == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
