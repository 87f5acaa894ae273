"""``guidestack run --faces`` on real photos: every face of a group photo is restored and pasted
back; a photo without a face is copied through with a warning."""

from __future__ import annotations

import json

import numpy as np
from conftest import shared
from PIL import Image

from guidestack.cli.main import main

FAST = ["--prior", "gaussian-faces-64", "--steps", "5", "--quiet", "--faces"]


def test_group_photo_restores_each_face(tmp_path):
    photo = shared("faces", "wild", "faceapi_sample1_group.jpg")
    out = tmp_path / "out"
    assert main(["run", "restore", str(photo), "-o", str(out), *FAST]) == 0
    (entry,) = json.loads((out / "run.json").read_text())["inputs"]
    assert entry["status"] == "done"
    assert len(entry["faces"]) == 3
    for i in range(3):
        aligned = out / "faces" / f"{photo.stem}_face{i:02d}_aligned.png"
        restored = out / "faces" / f"{photo.stem}_face{i:02d}_restored.png"
        assert Image.open(aligned).size == (64, 64) and restored.is_file()
    result = np.asarray(Image.open(out / f"{photo.stem}.png")).astype(float)
    original = np.asarray(Image.open(photo).convert("RGB")).astype(float)
    assert result.shape == original.shape
    changed = np.abs(result - original).max(axis=2) > 12
    for face in entry["faces"]:
        x0, y0, x1, y1 = (int(v) for v in face["box"])
        assert changed[y0:y1, x0:x1].mean() > 0.2  # the face was replaced ...
    assert changed.mean() < 0.1  # ... and the background kept
    assert entry["model_calls"] == 5  # all faces of a photo go through the recipe as one batch


def test_photo_without_face_is_copied_through(tmp_path):
    flat = tmp_path / "wall.png"
    Image.fromarray(np.full((120, 160, 3), 90, dtype=np.uint8)).save(flat)
    out = tmp_path / "out"
    assert main(["run", "restore", str(flat), "-o", str(out), *FAST]) == 0
    (entry,) = json.loads((out / "run.json").read_text())["inputs"]
    assert entry["faces"] == [] and any("no face" in w for w in entry["warnings"])
    assert np.array_equal(np.asarray(Image.open(out / "wall.png")), np.asarray(Image.open(flat)))


def test_faces_and_mask_are_refused_together(tmp_path, capsys):
    flat = tmp_path / "wall.png"
    Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(flat)
    code = main(
        ["run", "restore", str(flat), "-o", str(tmp_path / "o"), *FAST, "--mask", str(flat)]
    )
    assert code == 2 and "--faces" in capsys.readouterr().err
