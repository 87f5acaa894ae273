"""A forgiving command line, tried as a new user would: options anywhere, validate says which
prior it checked for, whole-run problems refused once and up front, hints where a user is
probably in the wrong place."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import EXAMPLES
from PIL import Image

from guidestack.cli.main import main

FAST = ["--steps", "4"]
PRIOR = ["--prior", "gaussian-faces-64"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--quiet", "run", "restore", "IN", "-o", "OUT", *FAST, *PRIOR],
        ["run", "restore", "IN", "-o", "OUT", *FAST, *PRIOR, "--quiet"],
        ["--debug", "run", "restore", "IN", "-o", "OUT", *FAST, *PRIOR, "--quiet"],
        ["run", "--debug", "restore", "IN", "-o", "OUT", *FAST, *PRIOR, "--quiet"],
    ],
)
def test_debug_and_quiet_before_or_after_the_command(argv, tmp_path, capsys):
    argv = [str(EXAMPLES / "astronaut_degraded.png") if a == "IN" else a for a in argv]
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "step/s" not in err and "it/s" not in err  # no progress bar


def test_validate_checks_for_the_default_prior_and_says_which(capsys):
    assert main(["validate", "restore"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "valid for prior gaussian-faces-64" in first and "default prior" in first
    assert main(["validate", "restore", *PRIOR]) == 0
    out = capsys.readouterr().out
    assert "valid for prior gaussian-faces-64 (kind gaussian, --prior)" in out
    assert json.loads(out.split("\n", 1)[1])["guidance"]["rule"] == "dynamic"  # per_prior


def test_missing_weights_fail_once_before_any_input(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(EXAMPLES / "astronaut_degraded.png", inputs / name)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "restore-reference",
            str(inputs),
            "--reference",
            str(EXAMPLES / "astronaut.png"),
            "-o",
            str(out),
            *FAST,
            *PRIOR,
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("error:") == 1 and "weights" in err
    assert not out.exists()  # refused before anything was written


def test_a_refused_rerun_into_an_interrupted_run_suggests_resume(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(EXAMPLES / "astronaut_degraded.png", inputs / name)
    out = tmp_path / "out"
    args = ["run", "restore", str(inputs), "-o", str(out), *FAST, *PRIOR, "--quiet"]
    assert main(args) == 0
    report = json.loads((out / "run.json").read_text())
    report["inputs"][1]["status"] = "pending"  # as a killed run leaves it
    (out / "run.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" in err and "1 of 2 inputs done" in err


def test_a_photo_with_several_faces_gets_a_hint(tmp_path, capsys):
    photo = Image.new("RGB", (288, 160), (90, 90, 90))
    photo.paste(Image.open(EXAMPLES / "astronaut.png"), (8, 16))
    photo.paste(Image.open(EXAMPLES / "grace_hopper.png"), (152, 16))
    path = tmp_path / "two.png"
    photo.save(path)
    out = tmp_path / "out"
    assert main(["run", "restore", str(path), "-o", str(out), *FAST, *PRIOR, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "hint: two.png: 2 faces found" in err and "--faces" in err
    entry = json.loads((out / "run.json").read_text())["inputs"][0]
    assert "--faces" in entry["hints"][0]
    one = tmp_path / "one"
    assert (
        main(["run", "restore", str(EXAMPLES / "astronaut.png"), "-o", str(one), *FAST, *PRIOR])
        == 0
    )
    assert "hint:" not in capsys.readouterr().err
