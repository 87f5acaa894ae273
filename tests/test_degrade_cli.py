"""``guidestack degrade``: degraded copies and masks, reproducible per seed and file name."""

from __future__ import annotations

import json

import numpy as np
from conftest import EXAMPLES
from PIL import Image

from guidestack.cli.main import main

FACES = [EXAMPLES / "astronaut.png", EXAMPLES / "grace_hopper.png"]


def _arr(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32)


def test_degrade_writes_images_masks_and_manifest(tmp_path):
    out = tmp_path / "out"
    args = ["degrade", *map(str, FACES), "-o", str(out), "--degradation", "random-lines:3"]
    assert main([*args, "--seed", "4"]) == 0
    manifest = json.loads((out / "degrade.json").read_text())
    assert [e["output"] for e in manifest["inputs"]] == ["astronaut.png", "grace_hopper.png"]
    for face in FACES:
        y, mask = _arr(out / face.name), _arr(out / f"{face.stem}_mask.png")
        clean = _arr(face)
        assert y.shape == clean.shape  # the original size is kept without --size
        assert set(np.unique(mask)) == {0.0, 255.0}
        changed = np.abs(y - clean).max(axis=-1) > 0
        assert changed[mask == 255].mean() > 0.9 and not changed[mask == 0].any()
    # the same seed gives the same files; the faces got different lines (seed + file name)
    again = tmp_path / "again"
    assert main(["degrade", *map(str, FACES), "-o", str(again), "--degradation", "random-lines:3",
                 "--seed", "4"]) == 0  # fmt: skip
    for face in FACES:
        assert np.array_equal(_arr(again / face.name), _arr(out / face.name))
    m0, m1 = (_arr(out / f"{f.stem}_mask.png") for f in FACES)
    assert not np.array_equal(m0, m1)
    # refusing to overwrite, then replacing with --overwrite and another seed
    assert main([*args, "--seed", "5"]) == 2
    assert main([*args, "--seed", "5", "--overwrite"]) == 0
    assert not np.array_equal(_arr(out / "astronaut.png"), _arr(again / "astronaut.png"))


def test_degrade_severity_size_options_and_no_mask(tmp_path):
    out = tmp_path / "o"
    assert main(["degrade", str(FACES[0]), "-o", str(out), "--degradation", "jpeg:5",
                 "--size", "64", "--set", "quality=3"]) == 0  # fmt: skip
    assert _arr(out / "astronaut.png").shape == (64, 64, 3)
    assert not (out / "astronaut_mask.png").exists()
    entry = json.loads((out / "degrade.json").read_text())["inputs"][0]
    assert entry["degradation"]["quality"] == 3


def test_degrade_random_records_its_pick(tmp_path):
    out = tmp_path / "r"
    assert main(["degrade", *map(str, FACES), "-o", str(out), "--degradation", "random",
                 "--size", "64"]) == 0  # fmt: skip
    for entry in json.loads((out / "degrade.json").read_text())["inputs"]:
        assert 1 <= entry["picked"]["severity"] <= 5 and entry["picked"]["op"]


def test_degrade_usage_errors(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["degrade", str(FACES[0]), "-o", out, "--degradation", "nope"]) == 2
    assert "unknown degradation 'nope'" in capsys.readouterr().err
    assert main(["degrade", str(FACES[0]), "-o", out, "--degradation", "jpeg:7"]) == 2
    assert main(["degrade", str(FACES[0]), "-o", out, "--degradation", "mask"]) == 2
    assert "user's mask" in capsys.readouterr().err
    assert main(["degrade", str(tmp_path / "missing.png"), "-o", out, "--degradation", "jpeg"]) == 2
