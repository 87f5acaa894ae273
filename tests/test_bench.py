"""``guidestack bench`` end to end: degrade, restore with recipes, metrics, csv/md/html/grids."""

from __future__ import annotations

import base64
import csv
import io
import re

import pytest
from conftest import EXAMPLES, SHARED_DATA
from PIL import Image

from guidestack.cli.main import main
from guidestack.plugins.bench.runner import mean_interval

FACES = ["astronaut.png", "grace_hopper.png", "astronaut_old.png"]
BACKBONE = SHARED_DATA / "weights" / "lpips_alexnet_backbone.pt"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    clean = tmp_path_factory.mktemp("clean")
    for name in FACES:  # a folder of clean faces (copies of the repo's own examples)
        (clean / name).write_bytes((EXAMPLES / name).read_bytes())
    out = tmp_path_factory.mktemp("bench") / "out"
    args = ["bench", "restore", "inpaint", "restore-reference", "--clean", str(clean),
            "--degradation", "free-form-mask:2", "-o", str(out), "--steps", "10", "--seed", "3",
            "--quiet"]  # fmt: skip
    if BACKBONE.is_file():
        args += ["--lpips-backbone", str(BACKBONE)]
    assert main(args) == 0
    return out


def _rows(out):
    return list(csv.DictReader((out / "results.csv").open()))


def test_results_csv_has_every_method_and_face(report):
    rows = _rows(report)
    faces = {f.removesuffix(".png") for f in FACES}
    by = {(r["method"], r["image"]): r for r in rows}
    assert set(by) == {(m, f) for m in ("degraded", "restore", "inpaint", "restore-reference")
                       for f in faces}  # fmt: skip
    for f in faces:
        base, inpaint = by[("degraded", f)], by[("inpaint", f)]
        assert base["status"] == "ok" and base["model_calls"] == "0"
        assert inpaint["status"] == "ok" and int(inpaint["model_calls"]) > 0
        assert float(inpaint["seconds"]) > 0
        assert 0 < float(inpaint["ssim"]) <= 1
        assert by[("restore-reference", f)]["status"] == "skipped"
        assert "reference" in by[("restore-reference", f)]["note"]
        assert base["identity"] == ""  # never a made-up number
        if BACKBONE.is_file():
            assert float(base["lpips"]) > 0

    # the mask reached the inpainting recipe: on average it repairs the gray strokes
    def mean(method: str) -> float:
        return sum(float(by[(method, f)]["psnr"]) for f in faces) / len(faces)

    assert mean("inpaint") > mean("degraded") + 0.5


def test_results_md_summarises_with_intervals(report):
    md = (report / "results.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]] == [
        "degraded", "restore", "inpaint", "restore-reference",
    ]  # fmt: skip
    assert re.search(r"\| inpaint \| 3 \| \d+\.\d\d ± \d+\.\d\d \|", md)
    assert "`restore-reference`: needs a reference" in md
    assert "Unavailable metrics" in md and "identity" in md


def test_report_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(uris) == 3 * (1 + 3)  # clean + degraded + two restorations per face
    Image.open(io.BytesIO(base64.b64decode(uris[0]))).verify()
    assert "http://" not in page and "https://" not in page
    for name in ("degraded", "restore", "inpaint", "restore-reference"):
        assert name in page


def test_grids_and_files(report):
    grid = Image.open(report / "grid.png")
    outputs = Image.open(report / "grid_outputs.png")
    assert grid.height > 3 * 64 and grid.width > outputs.width
    assert (report / "images" / "inpaint" / "astronaut.png").is_file()
    assert (report / "images" / "degraded" / "astronaut_mask.png").is_file()


def test_mean_interval_is_the_t_interval():
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3**0.5, rel=1e-5)
    assert mean_interval([5.0]) == (5.0, None)
    from guidestack.plugins.bench.runner import t975

    assert t975(40) == pytest.approx(2.021075, abs=1e-6)  # scipy.stats.t.ppf(0.975, 40)
    assert t975(1000) == pytest.approx(1.962339, abs=1e-6)


def test_bench_refuses_bad_specs(tmp_path):
    clean = str(EXAMPLES / "astronaut.png")
    out = str(tmp_path / "o")
    assert main(["bench", "restore", "--clean", clean, "--degradation", "nope", "-o", out]) == 2
    assert main(["bench", "no-such-recipe", "--clean", clean, "--degradation", "jpeg",
                 "-o", out]) == 2  # fmt: skip


def test_missing_metric_weights_are_reported_not_faked(tmp_path):
    from guidestack.plugins.bench.runner import metric_suite

    available, unavailable = metric_suite(
        str(tmp_path / "no-backbone.pt"), str(tmp_path / "no-facenet.pt"), "cpu"
    )
    assert set(available) == {"psnr", "ssim"}
    assert "no-backbone.pt" in unavailable["lpips"] and "does not exist" in unavailable["lpips"]
    assert "no-facenet.pt" in unavailable["identity"]
