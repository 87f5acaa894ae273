"""Bad input never loses anything: each case asserts the exit code, that the message names the
cause, that nothing partial or overwritten is left, and that the good inputs still complete."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guidestack.cli.main import main
from guidestack.engine import registry as registry_module
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.registry import load_registry
from guidestack.engine.stage import GuidanceOptions, Stage

FAST = ["--steps", "4", "--quiet"]


class NanLoss(Stage):
    name = "test-nan-loss"
    description = "returns NaN from step 2 on"
    Options = GuidanceOptions

    @hookimpl
    def guidance_loss(self, ctx, state):
        value = float("nan") if state.index >= 2 else 0.0
        return state.x0.sum(dim=(1, 2, 3)) * 0 + value


class NeedsMask(Stage):
    name = "test-needs-mask"
    description = "requires a mask"
    Options = GuidanceOptions
    requires = ("mask",)

    @hookimpl
    def guidance_loss(self, ctx, state):
        return (
            ((state.x0 - ctx.observation.image) * (1 - ctx.observation.mask))
            .pow(2)
            .flatten(1)
            .sum(1)
        )


@pytest.fixture(autouse=True)
def test_registry(monkeypatch):
    reg = load_registry(blocked=set(), entry_points=False)
    reg.add_stage(NanLoss)
    reg.add_stage(NeedsMask)
    monkeypatch.setattr(registry_module, "_DEFAULT", reg)
    return reg


def face(path: Path, size=(48, 40), mode="RGB", seed=0, fmt=None, **save) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt, **save)
    return path


def good(tmp: Path) -> Path:
    return face(tmp / "good.png", seed=1)


def recipe(tmp: Path, text: str) -> str:
    path = tmp / "recipe.toml"
    path.write_text(text)
    return str(path)


NAN_RECIPE = 'description = "nan"\n[sampler]\nkind = "ddpm"\n[[stage]]\nuse = "test-nan-loss"\n'
MASK_RECIPE = 'description = "mask"\n[sampler]\nkind = "ddpm"\n[[stage]]\nuse = "test-needs-mask"\n'


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # returns the CLI args after "run"
    code: int
    message: str = ""
    done: list[str] = field(default_factory=list)  # outputs that must exist
    absent: list[str] = field(default_factory=list)  # outputs that must not exist
    warning: str = ""  # a warning run.json must record


def _truncated(tmp: Path, fmt: str) -> Path:
    path = face(tmp / f"cut.{fmt.lower()}", size=(64, 64), fmt=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _huge(tmp: Path) -> Path:
    path = tmp / "huge.png"
    Image.new("1", (20000, 20000)).save(path)  # tiny on disk, 400 Mpx declared
    return path


def _exif_rotated(tmp: Path) -> Path:
    img = Image.fromarray(np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (32, 1))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    return path


def _rgba(tmp: Path) -> Path:
    arr = np.zeros((32, 32, 4), dtype=np.uint8)
    arr[..., :3] = 128
    arr[:, :16, 3] = 255
    path = tmp / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    return path


def _gray16(tmp: Path) -> Path:
    path = tmp / "gray16.png"
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(path)
    return path


def _palette(tmp: Path) -> Path:
    return face(tmp / "palette.png", mode="P")


def _dir_as_image(tmp: Path) -> Path:
    d = tmp / "folder.png"
    d.mkdir()
    return d


CASES = [
    # --- handled -------------------------------------------------------------------------
    Case("16-bit gray", lambda t: ["sample", str(_gray16(t))], 0, done=["gray16.png"]),
    Case("palette", lambda t: ["sample", str(_palette(t))], 0, done=["palette.png"]),
    Case("grayscale", lambda t: ["sample", str(face(t / "g.png", mode="L"))], 0, done=["g.png"]),
    Case(
        "rgba transparent",
        lambda t: ["sample", str(_rgba(t))],
        0,
        done=["rgba.png"],
        warning="alpha",
    ),
    Case("exif rotated", lambda t: ["sample", str(_exif_rotated(t))], 0, done=["rotated.png"]),
    Case(
        "non-square webp",
        lambda t: ["sample", str(face(t / "w.webp", size=(80, 30)))],
        0,
        done=["w.png"],
    ),
    Case("tiff", lambda t: ["sample", str(face(t / "x.tif"))], 0, done=["x.png"]),
    # --- refused inputs; the good input still completes ----------------------------------
    Case(
        "not an image",
        lambda t: ["sample", str(good(t)), str(_write(t / "bad.png", b"hello world"))],
        2,
        "bad.png",
        ["good.png"],
        ["bad.png"],
    ),
    Case(
        "empty file",
        lambda t: ["sample", str(good(t)), str(_write(t / "empty.jpg", b""))],
        2,
        "empty",
        ["good.png"],
        ["empty.png"],
    ),
    Case(
        "truncated png",
        lambda t: ["sample", str(good(t)), str(_truncated(t, "PNG"))],
        2,
        "cut.png",
        ["good.png"],
        ["cut.png"],
    ),
    Case(
        "truncated jpeg",
        lambda t: ["sample", str(good(t)), str(_truncated(t, "JPEG"))],
        2,
        "cut.jpeg",
        ["good.png"],
        ["cut.png"],
    ),
    Case(
        "missing file",
        lambda t: ["sample", str(good(t)), str(t / "nowhere.png")],
        2,
        "nowhere.png",
        ["good.png"],
    ),
    Case(
        "directory as image",
        lambda t: ["sample", str(good(t)), str(_dir_as_image(t))],
        2,
        "folder.png",
        ["good.png"],
    ),
    Case(
        "1x1 image",
        lambda t: ["sample", str(good(t)), str(face(t / "dot.png", size=(1, 1)))],
        2,
        "dot.png",
        ["good.png"],
        ["dot.png"],
    ),
    Case(
        "20000x20000 image",
        lambda t: ["sample", str(good(t)), str(_huge(t))],
        2,
        "huge.png",
        ["good.png"],
        ["huge.png"],
    ),
    Case(
        "mask of another size",
        lambda t: [
            recipe(t, MASK_RECIPE),
            str(good(t)),
            "--mask",
            str(face(t / "m.png", size=(10, 10))),
        ],
        2,
        "mask",
        absent=["good.png"],
    ),
    Case(
        "mask not an image",
        lambda t: [recipe(t, MASK_RECIPE), str(good(t)), "--mask", str(_write(t / "m.png", b"xx"))],
        2,
        "m.png",
        absent=["good.png"],
    ),
    Case(
        "missing mask for a masked recipe",
        lambda t: [recipe(t, MASK_RECIPE), str(good(t))],
        2,
        "needs a mask",
        absent=["good.png", "run.json"],
    ),
    Case(
        "reference unreadable",
        lambda t: [
            "sample",
            str(good(t)),
            "--reference",
            str(_write(t / "r.png", b"\x89PNG broken")),
        ],
        2,
        "r.png",
        absent=["good.png"],
    ),
    # --- refused runs: nothing is written ------------------------------------------------
    Case(
        "recipe syntax error",
        lambda t: [recipe(t, "description = \n["), str(good(t))],
        2,
        "not valid TOML",
        absent=["run.json"],
    ),
    Case(
        "recipe unknown stage",
        lambda t: [
            recipe(t, 'description = "x"\n[[stage]]\nuse = "smooth-semantic"'),
            str(good(t)),
        ],
        2,
        "did you mean",
        absent=["run.json"],
    ),
    Case(
        "recipe bad value",
        lambda t: [recipe(t, 'description = "x"\n[sampler]\neta = 3.0'), str(good(t))],
        2,
        "sampler.eta",
        absent=["run.json"],
    ),
    Case(
        "recipe unknown field",
        lambda t: [recipe(t, 'description = "x"\n[sampler]\nstepz = 3'), str(good(t))],
        2,
        "did you mean 'steps'",
        absent=["run.json"],
    ),
    Case(
        "unknown built-in recipe",
        lambda t: ["restor", str(good(t))],
        2,
        "did you mean 'restore'",
        absent=["run.json"],
    ),
    Case(
        "unknown prior",
        lambda t: ["sample", str(good(t)), "--prior", "gaussian-faces-65"],
        2,
        "unknown prior",
        absent=["run.json"],
    ),
    Case(
        "hub id offline",
        lambda t: ["sample", str(good(t)), "--prior", "google/ddpm-ema-celebahq-256"],
        2,
        "google/ddpm-ema-celebahq-256",
        absent=["run.json"],
    ),
    Case(
        "steps zero",
        lambda t: ["sample", str(good(t)), "--steps", "0"],
        2,
        "sampler.steps",
        absent=["run.json"],
    ),
    Case(
        "duplicate output names",
        lambda t: ["sample", str(good(t)), str(face(t / "good.jpg"))],
        2,
        "good.png",
        absent=["run.json"],
    ),
    Case(
        "cuda requested without cuda",
        lambda t: ["sample", str(good(t)), "--device", "cuda"],
        2,
        "CUDA",
        absent=["run.json"],
    )
    if not torch.cuda.is_available()
    else Case(
        "cpu device", lambda t: ["sample", str(good(t)), "--device", "cpu"], 0, done=["good.png"]
    ),
    Case(
        "stage loss returns NaN",
        lambda t: [recipe(t, NAN_RECIPE), str(good(t))],
        1,
        "not finite",
        absent=["good.png"],
    ),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _leftovers(out: Path) -> list[str]:
    return (
        [p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix in (".tmp", ".part")]
        if out.is_dir()
        else []
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    args = case.setup(inputs)
    prior = [] if "--prior" in args else ["--prior", "gaussian-faces-64"]
    code = main(["run", *FAST, *args, "-o", str(out), *prior])  # case options come last and win
    err = capsys.readouterr().err
    assert code == case.code, err
    if case.message:
        assert case.message in err, err
    for name in case.done:
        assert (out / name).is_file(), (name, err)
    for name in case.absent:
        assert not (out / name).exists(), name
    assert _leftovers(out) == []
    if case.code != 0 and (out / "run.json").exists():
        report = json.loads((out / "run.json").read_text())
        bad = [i for i in report["inputs"] if i["status"] != "done"]
        assert bad and all(i.get("error") for i in bad)
    if case.warning:
        report = json.loads((out / "run.json").read_text())
        assert any(case.warning in w for i in report["inputs"] for w in i.get("warnings", [])), (
            report
        )


def test_existing_outputs_are_not_overwritten(tmp_path, capsys):
    src = good(tmp_path)
    out = tmp_path / "out"
    assert (
        main(["run", "sample", str(src), "-o", str(out), "--prior", "gaussian-faces-64", *FAST])
        == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(
        [
            "run",
            "sample",
            str(src),
            "-o",
            str(out),
            "--prior",
            "gaussian-faces-64",
            "--seed",
            "5",
            *FAST,
        ]
    )
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert (
        main(
            [
                "run",
                "sample",
                str(src),
                "-o",
                str(out),
                "--prior",
                "gaussian-faces-64",
                "--seed",
                "5",
                "--overwrite",
                *FAST,
            ]
        )
        == 0
    )
    assert (out / "good.png").read_bytes() != before["good.png"]


def test_output_folder_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    code = main(
        [
            "run",
            "sample",
            str(good(tmp_path)),
            "-o",
            str(target),
            "--prior",
            "gaussian-faces-64",
            *FAST,
        ]
    )
    assert code == 2
    assert "taken" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_traceback_only_with_debug(tmp_path, capsys):
    path = recipe(tmp_path, NAN_RECIPE)
    src = str(good(tmp_path))
    assert (
        main(["run", path, src, "-o", str(tmp_path / "o1"), "--prior", "gaussian-faces-64", *FAST])
        == 1
    )
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--debug", "validate", str(tmp_path / "missing.toml")]) == 2
    assert "Traceback" in capsys.readouterr().err
