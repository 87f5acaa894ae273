"""The CLI end to end on a real face: outputs, pictures, run.json, listings, batch invariance."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from conftest import EXAMPLES, shared
from PIL import Image

from guidestack.cli.main import main

PRIOR = ["--prior", "gaussian-faces-64"]


def test_restore_real_face_end_to_end(tmp_path, capsys):
    face = shared("faces", "hq", "ddnm_celebahq_00234.png")
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "restore",
            str(face),
            "-o",
            str(out),
            *PRIOR,
            "--steps",
            "20",
            "--trajectory",
            "5",
            "--seed",
            "3",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    name = face.stem
    restored = Image.open(out / f"{name}.png")
    given = Image.open(face)
    assert restored.size == (min(given.size),) * 2 and restored.mode == "RGB"  # the input's size
    compare = Image.open(out / f"{name}_compare.png")
    assert compare.width > 2 * 64  # input | output side by side
    strip = Image.open(out / f"{name}_trajectory.png")
    assert strip.width > 5 * 64
    report = json.loads((out / "run.json").read_text())
    (entry,) = report["inputs"]
    assert entry["status"] == "done" and entry["model_calls"] == 20
    assert report["recipe"]["stage"][0]["use"] == "smooth-semantics"
    assert report["prior"]["name"] == "gaussian-faces-64"
    assert entry["seed"] == report["inputs"][0]["seed"]
    assert "restored" in err  # the closing line


def test_batch_size_does_not_change_results(tmp_path):
    inputs = [EXAMPLES / "astronaut_degraded.png", EXAMPLES / "grace_hopper_degraded.png"]
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--steps", "10", "--quiet", "--deterministic", *PRIOR]
    assert (
        main(["run", "restore", *map(str, inputs), "-o", str(a), "--batch-size", "2", *common]) == 0
    )
    assert main(["run", "restore", str(inputs[1]), "-o", str(b), *common]) == 0
    x = np.asarray(Image.open(a / "grace_hopper_degraded.png"))
    y = np.asarray(Image.open(b / "grace_hopper_degraded.png"))
    assert np.array_equal(x, y)
    report = json.loads((a / "run.json").read_text())
    assert report["recipe"]["sampler"]["deterministic"] is True


def test_seed_changes_result(tmp_path):
    src = str(EXAMPLES / "astronaut_degraded.png")
    for seed in ("1", "2"):
        assert (
            main(
                [
                    "run",
                    "sample",
                    src,
                    "-o",
                    str(tmp_path / seed),
                    "--seed",
                    seed,
                    "--steps",
                    "5",
                    "--quiet",
                    *PRIOR,
                ]
            )
            == 0
        )
    one = np.asarray(Image.open(tmp_path / "1" / "astronaut_degraded.png"))
    two = np.asarray(Image.open(tmp_path / "2" / "astronaut_degraded.png"))
    assert not np.array_equal(one, two)


def test_recipes_and_plugins_listings(capsys):
    assert main(["recipes", "--json"]) == 0
    recipes = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"sample", "restore"} <= set(recipes)
    assert all(r["description"] for r in recipes.values())
    assert main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    builtin = plugins["builtin"]
    stages = {s["name"]: s for s in builtin["stages"]}
    assert "guidance_loss" in stages["smooth-semantics"]["hooks"]
    assert "gaussian-faces-64" in {p["name"] for p in builtin["priors"]}
    assert main(["plugins"]) == 0
    assert "smooth-semantics" in capsys.readouterr().out


def test_validate_prints_resolved_recipe(capsys):
    assert main(["validate", "restore", "--set", "guidance.scale=0.2"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and '"scale": 0.2' in out


def test_console_script_and_exit_codes(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "guidestack", "validate", "sample"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "guidestack", "run"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "error:" in usage.stderr and "Traceback" not in usage.stderr
