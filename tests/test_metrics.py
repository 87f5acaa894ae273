"""Metrics against hand-computed values (PSNR, SSIM), the LPIPS project's reference values, and
identity similarity that is reported as unavailable, never made up, without its weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared
from PIL import Image

from guidestack.plugins.metrics.common import MetricUnavailable
from guidestack.plugins.metrics.fidelity import psnr, ssim
from guidestack.plugins.metrics.identity import identity_cosine
from guidestack.plugins.metrics.perceptual import lpips_distance
from guidestack.plugins.metrics.report import evaluate, summarize


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty torch cache: no torchvision or facenet weights anywhere."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


# ------------------------------------------------------------------------------------- PSNR


def test_psnr_hand_computed():
    x = torch.zeros(3, 3, 8, 8)
    y = x.clone()
    y[0] += 0.2  # MSE 0.04 on a range of 2: 10 log10(4 / 0.04) = 20 dB
    y[1, :, :4] = 2.0  # half the pixels off by 2: MSE 2, 10 log10(2) dB
    got = psnr(x, y)
    assert got[0].item() == pytest.approx(20.0, abs=1e-5)
    assert got[1].item() == pytest.approx(10 * math.log10(2), abs=1e-5)
    assert math.isinf(got[2].item())  # identical images
    assert psnr(x[1:2], y[1:2]).item() == got[1].item()  # per image, whatever the batch
    assert psnr(x, y, data_range=1.0)[0].item() == pytest.approx(20 - 20 * math.log10(2), abs=1e-5)
    with pytest.raises(ValueError, match="same shape|one shape"):
        psnr(x, y[:, :, :4])


# ------------------------------------------------------------------------------------- SSIM


def ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM written out: 11x11 Gaussian window (sigma 1.5), every valid position,
    images in [0, 1], C1 = 0.01^2, C2 = 0.03^2, mean over channels and positions."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cov = (w * a * b).sum() - ma * mb
                values.append(
                    (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
                )
    return float(np.mean(values))


def test_ssim_of_constant_images_is_the_luminance_term():
    x = torch.full((1, 3, 12, 12), 0.0)  # 0.5 in [0, 1]
    y = torch.full((1, 3, 12, 12), 0.2)  # 0.6
    expected = (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)  # variances are 0: c-s term is 1
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-6)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-9)


def test_ssim_equals_the_written_out_definition():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 16, 14, generator=g) * 2 - 1
    noisy = (x + 0.3 * torch.randn(2, 3, 16, 14, generator=g)).clamp(-1, 1)
    y = torch.stack([noisy[0], -x[1]])  # a noisy copy, and a negative (structure anticorrelated)
    got = ssim(x, y)
    for i in range(2):
        want = ssim_by_hand(((x[i] + 1) / 2).double().numpy(), ((y[i] + 1) / 2).double().numpy())
        assert got[i].item() == pytest.approx(want, abs=1e-6)
    assert 0 < got[0] < 0.9 and got[1] < 0
    with pytest.raises(ValueError, match="at least 11"):
        ssim(x[..., :10, :10], y[..., :10, :10])


# ------------------------------------------------------------------------------------ LPIPS


def lpips_example(name: str) -> torch.Tensor:
    with Image.open(shared("lpips_examples", name)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1  # lpips.im2tensor
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def test_lpips_matches_the_reference_values():
    backbone = shared("weights", "lpips_alexnet_backbone.pt")
    ref, p0, p1 = (lpips_example(f"ex_{n}.png") for n in ("ref", "p0", "p1"))
    got = lpips_distance(torch.cat([ref, ref]), torch.cat([p0, p1]), backbone=backbone)
    assert got[0].item() == pytest.approx(0.722, abs=0.002)
    assert got[1].item() == pytest.approx(0.138, abs=0.002)
    assert lpips_distance(ref, ref, backbone=backbone).item() == pytest.approx(0.0, abs=1e-6)


def test_lpips_reads_torchvisions_cache_and_fails_clearly_offline(offline_cache):
    ref, p1 = lpips_example("ex_ref.png"), lpips_example("ex_p1.png")
    with pytest.raises(MetricUnavailable, match="alexnet-owt-7be5be79.pth"):
        lpips_distance(ref, p1)
    with pytest.raises(MetricUnavailable, match="does not exist"):
        lpips_distance(ref, p1, backbone=offline_cache / "missing.pt")
    # the same weights under torchvision's names, where torchvision caches them
    state = torch.load(shared("weights", "lpips_alexnet_backbone.pt"), weights_only=True)
    renamed = {"features." + k.split(".", 1)[1]: v for k, v in state.items()}
    cache = offline_cache / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(renamed, cache / "alexnet-owt-7be5be79.pth")
    assert lpips_distance(ref, p1).item() == pytest.approx(0.138, abs=0.002)


# --------------------------------------------------------------------------------- identity


def test_identity_is_unavailable_without_weights(offline_cache):
    faces = torch.rand(2, 3, 64, 64) * 2 - 1
    result = identity_cosine(faces, faces)
    assert result.values is None and not result.available
    assert "20180402-114759-vggface2.pt" in result.reason and str(offline_cache) in result.reason
    missing = identity_cosine(faces, faces, weights=offline_cache / "nope.pt")
    assert missing.values is None and "does not exist" in missing.reason


def test_identity_cosine_with_a_weights_file(tmp_path):
    """Any InceptionResnetV1 state dict is used as given (here a randomly initialised one: the
    numbers are not an identity measure, but they are computed, not invented)."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    b = torch.stack([a[0], torch.rand(3, 64, 64, generator=g) * 2 - 1])
    result = identity_cosine(a, b, weights=tmp_path / "w.pt")
    assert result.available and result.values.shape == (2,)
    assert result.values[0].item() == pytest.approx(1.0, abs=1e-5)

    # the network sees MTCNN's box of the aligned face at 160 px, standardised as facenet does
    def box(f: torch.Tensor) -> torch.Tensor:
        crop = f[..., 11:58, 15:50]  # FACE_BOX (0.23, 0.17, 0.78, 0.90) of 64 px
        return F.interpolate(crop, size=(160, 160), mode="bilinear", antialias=True) * (127.5 / 128)

    with torch.no_grad():
        want = F.cosine_similarity(net(box(a[1:])), net(box(b[1:])))
    assert result.values[1].item() == pytest.approx(want.item(), abs=1e-6)


# ---------------------------------------------------------------------------------- report


def test_evaluate_and_summarize(offline_cache):
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    out = torch.stack([ref[0], (ref[1] + 0.1).clamp(-1, 1)])
    rows = evaluate(out, ref, lpips_backbone=shared("weights", "lpips_alexnet_backbone.pt"))
    assert math.isinf(rows[0]["psnr"]) and rows[0]["ssim"] == pytest.approx(1.0)
    assert rows[1]["psnr"] < 30 and 0 < rows[1]["lpips"] < 1 and rows[0]["lpips"] < 1e-6
    assert rows[0]["identity"] is None and "vggface2" in rows[0]["identity_unavailable"]
    summary = summarize(rows, model_calls=40, seconds=3.0)
    assert summary["psnr"] == rows[1]["psnr"] and summary["psnr_infinite"] == 1
    assert summary["model_calls_per_image"] == 20 and summary["seconds_per_image"] == 1.5
    assert summary["identity"] is None and "vggface2" in summary["identity_unavailable"]
    with pytest.raises(MetricUnavailable):
        evaluate(out, ref, metrics=("lpips",))
    assert set(evaluate(out, ref, metrics=("psnr",))[0]) == {"psnr"}
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(out, ref, metrics=("fid",))
