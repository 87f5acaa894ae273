"""Batches in both modes: by default (batched denoiser, networks, losses and sphere projection) a
batch of N equals N single runs within 1e-5; with ``sampler.deterministic`` it is bit-identical.

Covered: the Gaussian prior with every PGDiff property and repeats, a diffusers UNet (DDIM with
noise, DDPM with learned variance), the identity and perceptual networks, ODEdit/CODE and SHRED
(with a blind operator and early stopping).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from guidestack.engine.context import Observation
from guidestack.engine.run import run_recipe
from guidestack.plugins.priors.diffusers_prior import DiffusersPrior
from guidestack.plugins.priors.tiny import build_tiny_unet, tiny_scheduler
from guidestack.testing import face_batch, make_recipe, tiny_prior

#: default mode: batch vs single runs, max abs difference of the images in [-1, 1]
TOL = 1e-5
#: through a UNet the network's own batched convolutions differ from single-sample ones (2e-6 in
#: eps per call, measured on the tiny UNet), and x0 = (x_t - b eps) / a amplifies that by 1/a
#: near T (160x at t = 999): measured up to 5e-5 after 20 DDIM steps on the random tiny UNet;
#: the engine's own arithmetic adds nothing (deterministic mode is bit for bit)
UNET_TOL = 1e-4
MODES = ["default", "deterministic"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gauss16():
    return tiny_prior(16)


@pytest.fixture(scope="module")
def gauss64():
    return tiny_prior(64)


def check(registry, prior, raw, obs, seeds, mode, overrides=(), tol=TOL):
    """Run the batch and each sample alone; compare per the mode; return the max difference."""
    recipe = make_recipe(
        raw,
        registry,
        prior=prior,
        overrides=[*overrides, f"sampler.deterministic={mode != 'default'}"],
    )
    assert recipe.sampler.deterministic == (mode == "deterministic")
    together, ctx = run_recipe(recipe, prior, obs, seeds, registry)
    assert ctx.deterministic == recipe.sampler.deterministic
    worst = 0.0
    for i, seed in enumerate(seeds):
        alone, _ = run_recipe(recipe, prior, obs.select([i]), [seed], registry)
        if mode == "deterministic":
            assert torch.equal(alone.image[0], together.image[i]), i
        worst = max(worst, float((alone.image[0] - together.image[i]).abs().max()))
    assert worst < tol, worst
    return worst


def box_mask(n: int, size: int) -> torch.Tensor:
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
    mask[1:, :, : size // 4, : size // 4] = 1  # another hole for the others
    return mask


@pytest.mark.parametrize("mode", MODES)
def test_pgdiff_properties_with_repeats(registry, gauss16, mode):
    raw = {
        "sampler": {"kind": "ddpm", "steps": 12},
        "guidance": {"rule": "dynamic_channel", "scale": 0.3, "repeats": 2},
        "stage": [
            {"use": "smooth-semantics", "restorer": {"use": "gaussian-blur", "sigma": 1.0}},
            {"use": "lightness", "region": "known", "restorer": {"use": "median"}},
            {"use": "color-statistics", "weight": 0.5, "mask_gradient": True},
            {"use": "unmasked-region"},
        ],
    }
    obs = Observation(image=face_batch(3, 16), mask=box_mask(3, 16))
    check(registry, gauss16, raw, obs, [3, 4, 5], mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["ddim", "ddpm-learned"])
def test_diffusers_unet(registry, mode, kind):
    if kind == "ddim":
        prior = DiffusersPrior(build_tiny_unet(16), dict(tiny_scheduler().config))
        raw = {"sampler": {"kind": "ddim", "steps": 8, "eta": 0.7}}
    else:
        scheduler = tiny_scheduler(variance_type="learned_range")
        prior = DiffusersPrior(build_tiny_unet(16, out_channels=6), dict(scheduler.config))
        raw = {
            "sampler": {"kind": "ddpm", "steps": 8},
            "guidance": {"rule": "mean_shift", "scale": 0.1},
            "stage": [{"use": "smooth-semantics", "restorer": {"use": "identity"}}],
        }
    obs = Observation(image=face_batch(3, 16))
    check(registry, prior, raw, obs, [1, 2, 3], mode, tol=UNET_TOL)


@pytest.fixture(scope="module")
def network_files(tmp_path_factory):
    """A seeded random InceptionResnetV1 and a random LPIPS AlexNet backbone, as weights files."""
    import lpips
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    folder = tmp_path_factory.mktemp("networks")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" notices
        torch.manual_seed(0)
        facenet = InceptionResnetV1(pretrained=None).eval()
        backbone = lpips.pretrained_networks.alexnet(requires_grad=False, pretrained=False)
    torch.save(facenet.state_dict(), folder / "facenet.pt")
    torch.save(backbone.state_dict(), folder / "alex.pt")
    return folder / "facenet.pt", folder / "alex.pt"


@pytest.mark.parametrize("mode", MODES)
def test_identity_and_perceptual_networks(registry, gauss64, network_files, mode):
    facenet, alex = network_files
    x = face_batch(2, 64, seed=7)
    raw = {
        "sampler": {"kind": "ddpm", "steps": 4},
        "guidance": {"rule": "dynamic", "scale": 0.2},
        "stage": [
            {"use": "perceptual", "backbone": str(alex)},
            {"use": "identity", "weights": str(facenet), "size": 80, "window": [-1, 300]},
        ],
    }
    check(registry, gauss64, raw, Observation(image=x, reference=x.flip(0)), [5, 6], mode)


@pytest.mark.parametrize("mode", MODES)
def test_odedit_code(registry, gauss16, mode):
    overrides = [
        "sampler.steps=20",
        "stage.langevin.updates=8",
        "stage.ode-inversion.reconstruct=false",
    ]
    obs = Observation(image=face_batch(2, 16, seed=1))
    check(registry, gauss16, "code", obs, [11, 22], mode, overrides)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "options",
    [
        {"operator": {"use": "downsample", "factor": 4}, "stop_below": 0.02, "lr": 0.01},
        {"operator": {"use": "blind-blur", "size": 5}, "gradient": "full"},
    ],
    ids=["early-stop", "blind-full"],
)
def test_shred(registry, gauss16, mode, options):
    raw = {"stage": [{"use": "shred", "iterations": 8, **options}]}
    obs = Observation(image=face_batch(3, 16, seed=3))
    check(registry, gauss16, raw, obs, [1, 2, 3], mode)


def test_deterministic_mode_calls_the_denoiser_per_sample(registry, gauss16):
    """Both modes make the same counted calls; deterministic ones reach the prior sample by sample
    unless the prior computes per sample itself (``batch_invariant``)."""
    seen: list[int] = []

    def spy(module, args):
        seen.append(args[0].shape[0])

    handle = gauss16.register_forward_pre_hook(spy)
    try:
        obs = Observation(image=face_batch(3, 16))
        for deterministic, invariant, sizes in [
            (False, False, [3, 3]),
            (True, False, [1] * 6),
            (True, True, [3, 3]),
        ]:
            gauss16.batch_invariant = invariant
            seen.clear()
            raw = {"sampler": {"steps": 2, "deterministic": deterministic}}
            _, ctx = run_recipe(make_recipe(raw, registry), gauss16, obs, [0, 1, 2], registry)
            assert ctx.model_calls == 2 and seen == sizes
    finally:
        handle.remove()
        gauss16.batch_invariant = False
