"""The web UI (guidestack.plugins.ui): its engine-facing logic, and one real-browser session.

The browser test starts ``guidestack ui`` on a free loopback port, drives Debian's Chromium with
Playwright (no browser download), runs ``inpaint`` on the offline prior, downloads the recipe and
the output, and checks that ``guidestack run`` with that recipe and seed writes the same image.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the ui extra is not installed: pip install 'guidestack[ui]'")

from conftest import EXAMPLES, REPO  # noqa: E402

from guidestack.engine.errors import UsageError  # noqa: E402
from guidestack.engine.recipe import load_recipe, validate  # noqa: E402
from guidestack.engine.stage import GuidanceOptions  # noqa: E402
from guidestack.plugins.ui import session as S  # noqa: E402

PRIOR = "gaussian-faces-64"
FACE = EXAMPLES / "astronaut_masked.png"
MASK = EXAMPLES / "astronaut_mask.png"
CHROMIUM = os.environ.get("GUIDESTACK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("GUIDESTACK_ARTIFACTS", REPO / "build" / "test-artifacts"))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "guidestack", *args], cwd=cwd, capture_output=True, text=True
    )


# --- without a browser ------------------------------------------------------------------------


def test_controls_come_from_the_options_model():
    controls = {c.name: c for c in S.controls_for(GuidanceOptions)}
    assert set(controls) == {"weight", "window"}  # use/id are not controls
    weight = controls["weight"]
    assert (weight.kind, weight.default, weight.minimum) == ("float", 1.0, 0.0)
    assert "multiplies" in weight.help
    assert controls["window"].kind == "toml" and controls["window"].optional


def test_every_registered_stage_gets_controls(registry):
    for name in registry.names("stage"):
        cls = registry.stage(name)
        for c in S.controls_for(cls.Options):
            assert c.kind in ("bool", "int", "float", "choice", "text", "toml"), (name, c)
            if c.kind == "choice":
                assert c.choices, (name, c.name)


def test_toml_round_trip_and_compose_errors(registry):
    raw = S.recipe_for_prior("inpaint", registry, PRIOR, "gaussian")
    assert "per_prior" not in raw and "example" not in raw and raw["prior"]["name"] == PRIOR
    S.set_option(raw, "sampler", "steps", 7)
    S.set_option(raw, 0, "window", S.parse_toml_value(S.toml_value((10, 900))))
    text = S.to_toml(raw, "a header")
    import tomllib

    again = validate(tomllib.loads(text), registry, "round-trip")
    assert again.sampler.steps == 7 and again.stages[0].window == (10, 900)
    assert S.problems_of(raw, registry) == []
    S.add_stage(raw, "unmasked-region")  # a second stage with the same id
    S.set_option(raw, 1, "weight", -1.0)
    paths = [p for p, _ in S.problems_of(raw, registry)]
    assert "stage[1].weight" in paths
    S.remove_stage(raw, 1)
    S.add_stage(raw, "paste-known") if "paste-known" in registry.names("stage") else None
    S.move_stage(raw, len(raw["stage"]) - 1, -1)
    assert raw["stage"][-1]["use"] == "unmasked-region" or len(raw["stage"]) == 1


def test_safe_stem_never_gives_a_path():
    assert S.safe_stem("../../etc/passwd.png") == "passwd"
    assert S.safe_stem("a b/c d.png") == "c_d"
    assert S.safe_stem("") == "input"


def test_ui_run_equals_cli_run(registry, tmp_path):
    """The UI's run writes the same PNG as ``guidestack run`` given the saved recipe and seed."""
    raw = S.recipe_for_prior("inpaint", registry, PRIOR, "gaussian")
    S.set_option(raw, "sampler", "steps", 6)
    priors = S.PriorCache(registry)
    files = S.RunFiles(FACE, MASK, None, FACE.stem)
    steps = []
    outcome = S.execute(
        raw, files, 5, priors, tmp_path / "ui", on_event=lambda e, **i: steps.append(e)
    )
    assert steps.count("step") == 6
    assert "--seed 5" in outcome.cli and FACE.name in outcome.cli
    from guidestack.cli.main import main

    recipe = tmp_path / "ui" / "recipe.toml"
    load_recipe(str(recipe), registry)  # valid as saved
    code = main(
        [
            "run",
            str(recipe),
            str(FACE),
            "--mask",
            str(MASK),
            "--seed",
            "5",
            "-o",
            str(tmp_path / "cli"),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert np.array_equal(_pixels(outcome.output), _pixels(tmp_path / "cli" / f"{FACE.stem}.png"))
    other = S.execute(raw, files, 6, priors, tmp_path / "ui6")
    assert not np.array_equal(_pixels(outcome.output), _pixels(other.output))  # the seed matters


def test_cancel_and_refusals(registry, tmp_path, monkeypatch):
    raw = S.recipe_for_prior("inpaint", registry, PRIOR, "gaussian")
    priors = S.PriorCache(registry)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(S.Cancelled):
        S.execute(raw, S.RunFiles(FACE, MASK, None, "x"), 0, priors, tmp_path / "c", cancel=cancel)
    assert not (tmp_path / "c" / "x.png").exists()
    with pytest.raises(UsageError, match="needs a mask"):
        S.execute(raw, S.RunFiles(FACE, None, None, "x"), 0, priors, tmp_path / "m")
    with pytest.raises(UsageError, match="registered priors"):
        priors.get(str(tmp_path / "prior.pt"))  # no server-side paths from the browser
    sneaky = S.recipe_for_prior("inpaint", registry, PRIOR, "gaussian")
    sneaky["prior"]["name"] = "/etc/prior.pt"
    with pytest.raises(UsageError, match=r"not accepted from the browser \(prior\.name\)"):
        S.execute(sneaky, S.RunFiles(FACE, MASK, None, "x"), 0, priors, tmp_path / "s")
    monkeypatch.setattr(S, "MAX_UPLOAD_PIXELS", 100 * 100)
    with pytest.raises(UsageError, match="at most"):
        S.execute(raw, S.RunFiles(FACE, MASK, None, "x"), 0, priors, tmp_path / "p")


def test_cli_says_when_the_extra_is_missing(tmp_path):
    code = (
        "import sys; sys.modules['gradio'] = None\n"
        "from guidestack.cli.main import main\n"
        "raise SystemExit(main(['ui']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert "pip install 'guidestack[ui]'" in done.stderr


# --- in a real browser ------------------------------------------------------------------------


def _need_browser():
    """Skip locally without Chromium/Playwright; fail in CI (GUIDESTACK_REQUIRE_BROWSER=1)."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright python package"
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("GUIDESTACK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required but {missing} is not installed")
        pytest.skip(f"browser test: {missing} is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_server(tmp_path):
    _need_browser()
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "guidestack", "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"guidestack ui did not start:\n{proc.stdout.read()}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert "loopback only" in out  # it said where it listens
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("guidestack-ui-")]
    assert leftovers == [], "the UI left its temporary folder behind"


@pytest.mark.slow
@pytest.mark.browser
def test_browser_inpaint_roundtrip(ui_server, tmp_path, registry):
    """BROWSER: upload a face and a mask, run inpaint, download the recipe, re-run it with the CLI."""
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(dir=tmp_path, prefix="chromium-"))
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(ui_server, wait_until="load")
            page.wait_for_selector("#problems :text('Recipe is valid')", timeout=30_000)
            page.locator("#input-image input[type=file]").set_input_files(str(FACE))
            page.locator("#input-image img").wait_for(timeout=10_000)
            page.locator("#steps input").fill("4")
            page.locator("#steps input").press("Tab")
            # a mask painted on the input is used (and offered for download with the recipe)
            page.get_by_text("or draw the mask").click()
            page.locator("#mask-editor button[aria-label='Brush']").first.click()
            box = page.locator("#mask-editor canvas").first.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x - 20, y)
            page.mouse.down()
            for k in range(10):
                page.mouse.move(x - 20 + 4 * k, y)
            page.mouse.up()
            page.wait_for_timeout(1000)
            page.locator("#run").click()
            page.wait_for_selector("#status :text('Done (4 steps)')", timeout=60_000)
            assert "--mask astronaut_masked_mask.png" in page.locator("#status").inner_text()
            assert page.locator('#downloads a[download="astronaut_masked_mask.png"]').count() == 1
            page.locator("#mask-upload input[type=file]").set_input_files(str(MASK))
            page.locator("#mask-upload img").wait_for(timeout=10_000)
            page.locator("#steps input").fill("8")
            page.locator("#steps input").press("Tab")
            page.locator("#seed input").fill("3")
            page.locator("#seed input").press("Tab")
            page.locator("#run").click()
            page.wait_for_selector("#status :text('Done (8 steps)')", timeout=60_000)
            assert page.locator("#compare img").count() >= 1  # the before/after shows the output
            status = page.locator("#status").inner_text()
            assert "--seed 3" in status and "--mask astronaut_mask.png" in status
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui_inpaint.png"), full_page=True)
            got = {}
            for name in ("recipe.toml", f"{FACE.stem}.png", "run.json"):
                link = page.locator(f'#downloads a[download="{name}"]')
                with page.expect_download() as info:
                    link.click()
                got[name] = tmp_path / "dl" / name
                info.value.save_as(got[name])
        finally:
            browser.close()
    external = [u for u in requests if not u.startswith((ui_server, "data:", "blob:"))]
    assert external == [], f"the UI fetched from other hosts (it must work offline): {external}"

    recipe = load_recipe(str(got["recipe.toml"]), registry)
    assert recipe.sampler.steps == 8 and [s.use for s in recipe.stages] == ["unmasked-region"]
    run = _cli(
        "run",
        str(got["recipe.toml"]),
        str(FACE),
        "--mask",
        str(MASK),
        "--seed",
        "3",
        "-o",
        str(tmp_path / "cli"),
        "--quiet",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert np.array_equal(
        _pixels(got[f"{FACE.stem}.png"]), _pixels(tmp_path / "cli" / f"{FACE.stem}.png")
    )
    shutil.rmtree(profile, ignore_errors=True)


def test_faces_in_the_wild_is_the_clis_faces_path(registry, tmp_path):
    """Faces mode: boxes drawn on the input, each face restored, same photo as ``run --faces``."""
    photo = EXAMPLES / "grace_hopper_old.png"
    raw = S.recipe_for_prior("restore", registry, PRIOR, "gaussian")
    S.set_option(raw, "sampler", "steps", 4)
    outcome = S.execute(
        raw, S.RunFiles(photo, None, None, photo.stem), 1, S.PriorCache(registry),
        tmp_path / "ui", faces=S.FacesOptions(),
    )  # fmt: skip
    assert "--faces" in outcome.cli and len(outcome.faces) == 1
    boxed, plain = _pixels(outcome.detected), _pixels(photo)
    assert boxed.shape == plain.shape and (boxed != plain).any()  # the box is drawn
    from guidestack.cli.main import main

    out = tmp_path / "cli"
    args = ["run", str(outcome.recipe_toml), str(photo), "--faces", "--seed", "1", "-o", str(out)]
    assert main([*args, "--quiet", "--device", "cpu"]) == 0
    assert np.array_equal(_pixels(outcome.output), _pixels(out / f"{photo.stem}.png"))
    with pytest.raises(UsageError, match="mask cannot"):
        S.execute(raw, S.RunFiles(photo, MASK, None, "x"), 1, S.PriorCache(registry),
                  tmp_path / "m", faces=S.FacesOptions())  # fmt: skip


def test_drawn_mask_is_the_union_of_painted_layers():
    from guidestack.plugins.ui.app import _drawn_mask

    layer = np.zeros((8, 8, 4), np.uint8)
    assert _drawn_mask({"background": None, "layers": [layer], "composite": None}) is None
    layer[2:4, 3:6, 3] = 255
    other = np.zeros((8, 8, 4), np.uint8)
    other[7, 7, 3] = 10
    mask = _drawn_mask({"layers": [layer, other]})
    assert mask.dtype == np.uint8 and mask.sum() == 255 * 7
    assert mask[2, 3] == 255 and mask[0, 0] == 0
