"""The spandrel restorer inside recipes (DifFace end to end, offline) and the ``restorers`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from guidestack.cli.main import main
from guidestack.engine.context import Observation
from guidestack.engine.recipe import load_recipe
from guidestack.engine.run import run_recipe
from guidestack.plugins.priors.gaussian import load_shipped_prior
from guidestack.plugins.restorers.spandrel_restorer import SpandrelOptions, SpandrelRestorer


@pytest.fixture(scope="module")
def swinir_file(tmp_path_factory):
    """A small SwinIR in DifFace's flavour (8x8 unshuffle, nearest+conv), built with spandrel's
    own class and seeded, saved as safetensors with DifFace's key names."""
    from spandrel.architectures.SwinIR import SwinIR

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SwinIR(img_size=16, embed_dim=24, depths=[2], num_heads=[3], window_size=8,
                     mlp_ratio=2.0, upscale=8, upsampler="nearest+conv", start_unshuffle=8)  # fmt: skip
    path = tmp_path_factory.mktemp("swinir") / "swinir.safetensors"
    from safetensors.torch import save_file

    state = {k.replace("conv_first.", "conv_first.1.", 1): v for k, v in net.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))  # DifFace's key names
    return path


def restorer_override(path) -> str:
    return f'stage.difface.restorer={{use="spandrel", path="{path}"}}'


def test_difface_runs_with_a_spandrel_restorer_offline(registry, swinir_file, tmp_path):
    out = tmp_path / "out"
    image = EXAMPLES / "astronaut_degraded.png"
    args = ["run", "difface", str(image), "-o", str(out), "--prior", "gaussian-faces-64"]
    assert main([*args, "--quiet", "--set", restorer_override(swinir_file)]) == 0
    report = json.loads((out / "run.json").read_text())
    assert report["recipe"]["stage"][0]["restorer"]["use"] == "spandrel"
    assert report["inputs"][0]["status"] == "done"
    restored = np.asarray(Image.open(out / "astronaut_degraded.png"))
    assert restored.shape == (128, 128, 3)  # the input's own size

    # the estimate DifFace diffused is the spandrel network's output on the observation
    recipe = load_recipe(
        "difface",
        registry,
        [restorer_override(swinir_file)],
        prior_name="gaussian-faces-64",
        prior_kind="gaussian",
    )
    from guidestack.io.images import read_image, to_square

    y = to_square(read_image(image).tensor, 64)[0][None]
    _, ctx = run_recipe(
        recipe, load_shipped_prior("gaussian-faces-64"), Observation(image=y), [0], registry
    )
    estimate = ctx.cache["restorer:difface"]
    direct = SpandrelRestorer(SpandrelOptions(path=str(swinir_file)))(y)
    torch.testing.assert_close(estimate, direct)
    assert (estimate - y).abs().mean() > 1e-3  # the network did something


def test_restorers_command_lists_restorers_models_and_architectures(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GUIDESTACK_MODELS", str(tmp_path))
    (tmp_path / "GFPGANv1.4.pth").write_bytes(b"x")
    assert main(["restorers", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in info["restorers"]}
    assert {"spandrel", "difface-swinir", "pgdiff-rrdb", "realesrgan-x4"} <= set(names)
    assert "path" in names["spandrel"]["options"] and "model" in names["spandrel"]["options"]
    models = {m["model"]: m for m in info["models"]}
    assert models["gfpgan-1.4"]["present"] and not models["scunet-psnr"]["present"]
    assert "checksum-verified" in models["scunet-psnr"]["needs"][0]
    assert "non-commercial" in models["codeformer"]["licence"]
    assert any("curl" in need for need in models["difface-swinir"]["needs"])
    assert info["models_dir"] == str(tmp_path)
    assert {"SwinIR", "ESRGAN", "SCUNet", "GFPGAN"} <= set(info["spandrel"]["architectures"])
    assert main(["restorers"]) == 0
    text = capsys.readouterr().out
    assert "spandrel" in text and "GFPGANv1.4.pth: present" in text
