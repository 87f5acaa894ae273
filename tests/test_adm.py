"""The ``adm`` prior backend: official key lists, official outputs, loading, learned variance.

No official weights are available here.  Instead each preset is checked against a reference
list of the official state-dict keys and shapes (tests/data/adm_*.json, sdedit-*.json, made by
constructing the authors' model classes), and against the official forward pass on seeded
weights (the ``golden`` entries).  Goldens of the 256 presets use a reduced width (32 base
channels; the topology is the preset's); the 512 preset cannot be narrowed (its first level
already has 32 channels, GroupNorm's minimum), so its golden runs the full-width network on a
64x64 input (5.8 GFLOP instead of 378 GFLOP at 512x512).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from keylists import check_golden, reference, seeded_input, seeded_state_dict

from guidestack.engine.context import Observation
from guidestack.engine.errors import PriorUnavailable
from guidestack.engine.prior_source import load_prior
from guidestack.engine.recipe import validate
from guidestack.engine.run import run_recipe
from guidestack.plugins.checkpoints import ModelCard, module_shapes
from guidestack.plugins.priors import adm, sdedit
from guidestack.plugins.priors.adm import (
    ADM_PRESETS,
    ADMPreset,
    ADMPrior,
    preset_shapes,
)
from guidestack.plugins.priors.adm_unet import ADMConfig, ADMUNet

ADM_NAMES = sorted(ADM_PRESETS)


def as_lists(shapes):
    return {k: list(v) for k, v in shapes.items()}


@pytest.mark.parametrize("name", ADM_NAMES)
def test_preset_has_the_official_keys_and_shapes(name):
    ref = reference(f"adm_{name}")
    assert as_lists(preset_shapes(ADM_PRESETS[name].config)) == ref["keys"]
    assert ref["buffers"] == {}


def golden_net(name: str, **changes) -> tuple[ADMUNet, dict]:
    golden = reference(f"adm_{name}")["golden"]
    cfg = golden["config"]
    width = cfg.get("model_channels", cfg.get("num_channels"))
    config = dataclasses.replace(ADM_PRESETS[name].config.with_width(width), **changes)
    with torch.device("meta"):
        net = ADMUNet(config)
    net.load_state_dict(seeded_state_dict(as_lists(module_shapes(net)), {}), assign=True)
    return net.eval(), golden


@pytest.mark.parametrize("name", ADM_NAMES)
def test_forward_equals_the_official_network(name):
    net, golden = golden_net(name)
    x = seeded_input(golden["input_shape"], golden["seed_input"])
    with torch.no_grad():
        out = net(x, torch.tensor(golden["timesteps"]))
    check_golden(out, golden)


def test_golden_check_catches_a_wrong_attention_layout():
    net, golden = golden_net("iddpm-ffhq-256", use_new_attention_order=True)
    x = seeded_input(golden["input_shape"], golden["seed_input"])
    with torch.no_grad():
        out = net(x, torch.tensor(golden["timesteps"]))
    with pytest.raises(AssertionError):
        check_golden(out, golden)


@pytest.mark.parametrize("name", ["iddpm-ffhq-256", "dps-ffhq-256"])
def test_reduced_width_forward_at_the_preset_resolution(name):
    config = ADM_PRESETS[name].config.with_width(32)
    net = ADMUNet(config).eval()
    x = torch.randn(1, 3, config.image_size, config.image_size)
    with torch.no_grad():
        out = net(x, torch.tensor([999]))
    assert out.shape == (1, 6, config.image_size, config.image_size)
    assert torch.isfinite(out).all()


def test_sdedit_keys_and_conversion_to_diffusers():
    ref = reference("sdedit-celebahq-256")
    assert as_lists(sdedit.sdedit_shapes()) == ref["keys"]
    meta = {k: torch.empty(v, device="meta") for k, v in ref["keys"].items()}
    converted = sdedit.convert_state_dict(meta, levels=6)
    from diffusers import UNet2DModel

    with torch.device("meta"):
        unet = UNet2DModel(**sdedit.unet_config())
    assert {k: tuple(v.shape) for k, v in converted.items()} == module_shapes(unet)


def test_sdedit_as_diffusers_equals_the_official_network():
    golden = reference("sdedit-celebahq-256")["golden"]
    model, data = golden["config"]["model"], golden["config"]["data"]
    config = dict(sdedit.SDEDIT_CONFIG, ch=model["ch"], image_size=data["image_size"])
    config["attn_resolutions"] = tuple(model["attn_resolutions"])
    state = seeded_state_dict(as_lists(sdedit.sdedit_shapes(config)), {})
    unet = sdedit.build_unet(state, config)
    x = seeded_input(golden["input_shape"], golden["seed_input"])
    with torch.no_grad():
        out = unet(x, torch.tensor(golden["timesteps"])).sample
    check_golden(out, golden)


# ------------------------------------------------------------------ loading (a tiny preset)

TINY = ADMPreset(
    "tiny-test",
    "a 32x32 ADM for loader tests",
    ADMConfig(32, 32, (1, 2), (1, 1), (16,), num_head_channels=32),
    ModelCard("tiny.pth", "https://example.invalid/tiny.pth", "test only", "tests"),
)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    monkeypatch.setitem(ADM_PRESETS, TINY.name, TINY)
    monkeypatch.setenv("GUIDESTACK_MODELS", str(tmp_path / "models"))
    torch.manual_seed(3)
    net = ADMUNet(TINY.config).eval()
    for p in net.parameters():  # non-zero everywhere so every key matters
        p.data.normal_(0, 0.05)
    return net


def write(net: torch.nn.Module, path, wrap: bool = True):
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state} if wrap else state, path)
    return path


def test_checkpoint_with_module_prefix_and_wrapper_loads(tiny, tmp_path):
    path = write(tiny, tmp_path / "tiny.pth")
    prior = adm.load_adm_prior(path, "tiny-test")
    assert isinstance(prior, ADMPrior) and prior.learned_variance
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
    out = prior(x, t)
    with torch.no_grad():
        ref = tiny(x, t)
    torch.testing.assert_close(out.eps, ref[:, :3])
    torch.testing.assert_close(out.variance_values, ref[:, 3:])
    assert prior.describe()["kind"] == "adm" and prior.name == "tiny-test"


def test_references_reach_the_adm_backend(tiny, tmp_path, registry):
    pt = write(tiny, tmp_path / "tiny.pt", wrap=False)  # .pt: the Gaussian backend must not take it
    for ref in (f"adm:tiny-test:{pt}", f"adm:{pt}", str(pt)):
        prior = load_prior(ref, registry)
        assert prior.kind == "adm" and prior.name == "tiny-test", ref


def test_wrong_file_or_preset_is_reported_precisely(tiny, tmp_path):
    path = write(tiny, tmp_path / "tiny.pth")
    with pytest.raises(PriorUnavailable, match="missing keys.*unexpected keys"):
        adm.load_adm_prior(path, "dps-ffhq-256")
    with pytest.raises(PriorUnavailable, match="unknown ADM preset"):
        adm.load_adm_prior(path, "nope")
    other = ADMUNet(dataclasses.replace(TINY.config, out_channels=3))
    with pytest.raises(PriorUnavailable, match="does not match any known ADM preset"):
        adm.load_adm_prior(write(other, tmp_path / "other.pth"))


def test_named_prior_reads_the_models_folder(tiny, tmp_path):
    factory = adm._named_factory("tiny-test")
    with pytest.raises(PriorUnavailable) as err:
        factory()
    message = str(err.value)
    assert "tiny.pth" in message and "https://example.invalid/tiny.pth" in message
    assert "test only" in message and "adm:tiny-test:" in message
    (tmp_path / "models").mkdir()
    write(tiny, tmp_path / "models" / "tiny.pth")
    assert factory().name == "tiny-test"


def test_real_named_priors_say_where_to_get_the_weights(registry, monkeypatch, tmp_path):
    monkeypatch.setenv("GUIDESTACK_MODELS", str(tmp_path))
    for name, fragment in [
        ("iddpm-ffhq-512", "zsyOAOA/DifFace/releases/download/V1.0/iddpm_ffhq512_ema500000.pth"),
        ("dps-ffhq-256", "gdown --folder"),
        ("sdedit-celebahq-256", "checkpoints/celeba_hq.ckpt"),
    ]:
        with pytest.raises(PriorUnavailable, match="non-commercial") as err:
            load_prior(name, registry)
        assert fragment in str(err.value)


def test_half_precision_torso(tiny, tmp_path):
    path = write(tiny, tmp_path / "tiny.pth")
    full = adm.load_adm_prior(path, "tiny-test")
    half = adm.load_adm_prior(path, "tiny-test", dtype="bfloat16")
    assert (
        half.unet.torso_dtype == torch.bfloat16 and half.unet.out[2].weight.dtype == torch.float32
    )
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    a, b = full(x, t), half(x, t)
    assert b.eps.dtype == torch.float32
    assert (a.eps - b.eps).abs().max() < 0.05 * a.eps.abs().max()


def test_sdedit_checkpoint_loads_as_a_diffusers_prior(monkeypatch, tmp_path, registry):
    small = dict(sdedit.SDEDIT_CONFIG, ch=32, image_size=32, ch_mult=(1, 2), attn_resolutions=(16,))
    monkeypatch.setattr(sdedit, "SDEDIT_CONFIG", small)
    state = seeded_state_dict(as_lists(sdedit.sdedit_shapes()), {})
    torch.save(state, tmp_path / "celeba_hq.ckpt")
    prior = load_prior(f"adm:{tmp_path / 'celeba_hq.ckpt'}", registry)
    assert (prior.kind, prior.name, prior.learned_variance) == (
        "diffusers",
        "sdedit-celebahq-256",
        False,
    )
    torch.testing.assert_close(prior.alphas_cumprod, adm.linear_alphas_cumprod(), rtol=1e-6, atol=0)
    unet = sdedit.build_unet(state)
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([321])
    with torch.no_grad():
        torch.testing.assert_close(prior(x, t).eps, unet(x, t).sample)


# ------------------------------------------------------------ learned variance in the engine


def constant_variance(net: ADMUNet, value: float) -> ADMPrior:
    """A copy of the tiny network with its variance head forced to ``v = value`` everywhere."""
    net = copy.deepcopy(net)
    conv = net.out[2]
    conv.weight.data[3:] = 0
    conv.bias.data[3:] = value
    return ADMPrior(net, name="tiny-test")


def sample(prior, registry, variance: str) -> torch.Tensor:
    recipe = validate(
        {"description": "t", "sampler": {"kind": "ddpm", "steps": 8, "variance": variance}},
        registry,
        "<test>",
    )
    obs = Observation(image=torch.zeros(2, 3, 32, 32))
    result, _ = run_recipe(recipe, prior, obs, [4, 5], registry)
    return result.image


def test_learned_variance_drives_the_ddpm_step(tiny, registry):
    """v = +1 is the large variance beta, v = -1 the small one: 'auto' must follow v."""
    upper = constant_variance(tiny, 1.0)
    torch.testing.assert_close(
        sample(upper, registry, "auto"), sample(upper, registry, "fixed_large")
    )
    lower = constant_variance(tiny, -1.0)
    auto_low = sample(lower, registry, "auto")
    torch.testing.assert_close(auto_low, sample(lower, registry, "fixed_small"))
    assert (auto_low - sample(upper, registry, "auto")).abs().max() > 1e-3
