"""The closed-form Gaussian prior against dense linear algebra, and its fitting from image folders."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from guidestack.engine.errors import InputError, OutputError, PriorUnavailable, UsageError
from guidestack.engine.prior import linear_alphas_cumprod
from guidestack.plugins.priors.fit import (
    SHIPPED_COMPONENTS,
    decode_image,
    fit_command,
    fit_from_folder,
    fit_gaussian_prior,
    refit_shipped_prior,
)
from guidestack.plugins.priors.gaussian import (
    GaussianPrior,
    load_shipped_prior,
    shipped_prior_path,
)

C, S, K = 3, 4, 5
D = C * S * S


def tiny_prior(dtype=torch.float64, channels=C, size=S, k=K, seed=0) -> GaussianPrior:
    g = torch.Generator().manual_seed(seed)
    d = channels * size * size
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    lam = torch.linspace(4.0, 1.0, k, dtype=torch.float64)
    mean = 0.3 * torch.randn(channels, size, size, generator=g, dtype=torch.float64)
    return GaussianPrior(mean, basis, lam, 0.2, name="tiny", dtype=dtype)


def dense_cov(p: GaussianPrior) -> torch.Tensor:
    u, lam = p.components.double(), p.lam.double()
    return u @ torch.diag(lam) @ u.T + float(p.s2) * torch.eye(p.dim, dtype=torch.float64)


def ab(t: int) -> tuple[float, float]:
    abar = float(linear_alphas_cumprod()[t])
    return math.sqrt(abar), math.sqrt(1.0 - abar)


# ------------------------------------------------------------------------------ exactness


def test_eps_equals_dense_conditional_expectation():
    p = tiny_prior()
    cov, m = dense_cov(p), p.mean
    ts = torch.tensor([0, 1, 10, 250, 500, 999, 730])
    x = 1.5 * torch.randn(len(ts), C, S, S, dtype=torch.float64)
    eps = p(x, ts).eps
    assert eps.shape == x.shape and eps.dtype == torch.float64
    for i, t in enumerate(ts.tolist()):
        a, b = ab(t)
        sigma = a * a * cov + b * b * torch.eye(D, dtype=torch.float64)
        expected = b * torch.linalg.solve(sigma, x[i].reshape(-1) - a * m)
        assert (eps[i].reshape(-1) - expected).abs().max() < 1e-8, t


def test_eps_gradient_is_the_dense_jacobian():
    p = tiny_prior()
    t = 300
    a, b = ab(t)
    x = torch.randn(1, C, S, S, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, C, S, S, dtype=torch.float64)
    (p(x, torch.tensor([t])).eps * v).sum().backward()
    sigma = a * a * dense_cov(p) + b * b * torch.eye(D, dtype=torch.float64)
    expected = b * torch.linalg.solve(sigma, v.reshape(-1))
    assert (x.grad.reshape(-1) - expected).abs().max() < 1e-10


def test_scalar_timestep_broadcasts_and_bad_timesteps_fail():
    p = tiny_prior()
    x = torch.randn(3, C, S, S, dtype=torch.float64)
    assert torch.equal(p(x, 400).eps, p(x, torch.full((3,), 400)).eps)
    with pytest.raises(ValueError, match="timesteps"):
        p(x, torch.tensor([1000, 0, 0]))
    with pytest.raises(ValueError, match="2 timesteps for a batch of 3"):
        p(x, torch.tensor([1, 2]))


@pytest.mark.parametrize(
    ("prior", "channels", "size"),
    [
        (lambda: tiny_prior(torch.float32, channels=3, size=5, k=4), 3, 5),
        (load_shipped_prior, 3, 64),
    ],
    ids=["odd-d-75", "shipped-64"],
)
def test_forward_is_bitwise_batch_invariant(prior, channels, size):
    # plain ``x @ U`` differs in the last bits between N=1 and N=4 on CPU (MKL); see docs/prior.md
    p = prior()
    p.batch_invariant = True
    g = torch.Generator().manual_seed(3)
    big = torch.randn(10, channels, size, size, generator=g)
    x = big[::2]  # a non-contiguous batch of 5
    ts = torch.tensor([0, 17, 500, 999, 263])
    batch = p(x, ts).eps
    assert batch.dtype == torch.float32
    for i in range(5):
        alone = p(x[i : i + 1].clone(), ts[i : i + 1]).eps
        assert torch.equal(batch[i : i + 1], alone), i
    for n in (2, 3, 4):
        assert torch.equal(p(x[:n], ts[:n]).eps, batch[:n])


def test_sample_moments_match_the_model():
    p = tiny_prior()
    n = 4096
    x = p.sample(n, torch.Generator().manual_seed(1)).reshape(n, -1)
    cov = dense_cov(p)
    assert x.dtype == torch.float64
    assert (x.mean(0) - p.mean).norm() < 0.05 * cov.trace().sqrt()
    emp = torch.cov(x.T)
    assert abs(emp.trace() / cov.trace() - 1) < 0.05
    along = p.components.T @ emp @ p.components  # variance along each principal direction
    assert torch.allclose(along.diag(), p.lam + p.s2, rtol=0.10)
    # the noisy marginal at t: mean a m, covariance a^2 C + b^2 I
    a, b = ab(600)
    xt = p.sample(n, torch.Generator().manual_seed(2), t=600).reshape(n, -1)
    assert (xt.mean(0) - a * p.mean).norm() < 0.05 * (a * a * cov.trace() + b * b * D).sqrt()
    assert abs(torch.cov(xt.T).trace() / (a * a * cov.trace() + b * b * D) - 1) < 0.05


def test_sample_with_one_generator_per_sample_is_batch_independent():
    p = tiny_prior()
    batch = p.sample(3, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    for i, s in enumerate((5, 6, 7)):
        assert torch.equal(batch[i : i + 1], p.sample(1, [torch.Generator().manual_seed(s)]))


@pytest.mark.parametrize("t", [None, 0, 400, 999])
def test_log_prob_matches_multivariate_normal(t):
    p = tiny_prior()
    x = torch.randn(4, C, S, S, dtype=torch.float64)
    a, b = (1.0, 0.0) if t is None else ab(t)
    mvn = torch.distributions.MultivariateNormal(
        a * p.mean, a * a * dense_cov(p) + b * b * torch.eye(D, dtype=torch.float64)
    )
    expected = mvn.log_prob(x.reshape(4, -1))
    got = p.log_prob(x, t if t is None else torch.full((4,), t))
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("sigma_y", [0.0, 0.1])
@pytest.mark.parametrize("mask_channels", [1, C])
def test_posterior_mean_matches_dense_conditional(sigma_y, mask_channels):
    p = tiny_prior()
    g = torch.Generator().manual_seed(4)
    y = torch.randn(3, C, S, S, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, mask_channels, S, S, generator=g) < 0.4).double()  # 1 = missing
    got = p.posterior_mean(y, mask, sigma_y=sigma_y)
    cov = dense_cov(p)
    for i in range(3):
        known = (mask[i].expand(C, S, S).reshape(-1) < 0.5).nonzero().squeeze(1)
        c_ok = cov[:, known]
        c_oo = cov[known][:, known] + sigma_y**2 * torch.eye(len(known), dtype=torch.float64)
        resid = y[i].reshape(-1)[known] - p.mean[known]
        expected = p.mean + c_ok @ torch.linalg.solve(c_oo, resid)
        assert (got[i].reshape(-1) - expected).abs().max() < 1e-10
    if sigma_y == 0:  # exactly observed pixels are kept
        known_px = mask.expand(3, C, S, S) < 0.5
        assert torch.allclose(got[known_px], y[known_px], atol=1e-12)


def test_posterior_mean_extremes():
    p = tiny_prior()
    y = torch.randn(2, C, S, S, dtype=torch.float64)
    assert torch.allclose(p.posterior_mean(y), y, atol=1e-12)  # everything known
    nothing = p.posterior_mean(y, torch.ones(2, 1, S, S, dtype=torch.float64))
    assert torch.allclose(nothing, p.mean.view(1, C, S, S).expand(2, -1, -1, -1), atol=1e-12)


def test_posterior_mean_linear_matches_dense():
    p = tiny_prior()
    g = torch.Generator().manual_seed(8)
    a_mat = torch.randn(20, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    y = torch.randn(2, 20, generator=g, dtype=torch.float64)
    cov = dense_cov(p)
    got = p.posterior_mean_linear(y, a_mat, noise_var=0.05)
    s_y = a_mat @ cov @ a_mat.T + 0.05 * torch.eye(20, dtype=torch.float64)
    for i in range(2):
        expected = p.mean + cov @ a_mat.T @ torch.linalg.solve(s_y, y[i] - a_mat @ p.mean)
        assert (got[i].reshape(-1) - expected).abs().max() < 1e-10


def test_dtype_and_device_moves_keep_the_schedule_float64():
    p = tiny_prior(torch.float32)
    exact = linear_alphas_cumprod()
    assert p.alphas_cumprod.dtype == torch.float64 and torch.equal(p.alphas_cumprod, exact)
    p.double()
    assert p.mean.dtype == torch.float64 and p.components.dtype == torch.float64
    assert torch.equal(p.alphas_cumprod, exact)
    p.to(torch.float32)
    assert p.compute_dtype == torch.float32 and torch.equal(p.alphas_cumprod, exact)
    assert p.describe()["kind"] == "gaussian" and p.describe()["components"] == K


# ----------------------------------------------------------------------------------- files


def test_save_load_roundtrip_and_bad_files(tmp_path):
    p = tiny_prior()
    p.metadata.update(source="unit test", num_images=7)
    path = tmp_path / "tiny.pt"
    p.save(path)
    q = GaussianPrior.load(path, dtype=torch.float64)
    assert (q.name, q.image_size, q.channels, q.num_components) == ("tiny", S, C, K)
    assert q.metadata["source"] == "unit test" and q.metadata["num_images"] == 7
    assert q.metadata["version"] == 1
    assert torch.equal(q.mean, p.mean.float().double())
    assert torch.equal(q.components, p.components.float().double())
    assert float(q.s2) == float(p.s2)
    with pytest.raises(PriorUnavailable, match="not found"):
        GaussianPrior.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(PriorUnavailable, match="not a readable torch file"):
        GaussianPrior.load(tmp_path / "junk.pt")
    payload = torch.load(path, weights_only=True)
    payload["metadata"]["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(PriorUnavailable, match="version 99"):
        GaussianPrior.load(tmp_path / "future.pt")
    with pytest.raises(PriorUnavailable, match="no shipped Gaussian prior"):
        shipped_prior_path("gaussian-cats-64")


# --------------------------------------------------------------------------------- fitting


def _dense_ppca(x: torch.Tensor, k: int):
    """Tipping & Bishop from the dense d x d sample covariance (the oracle)."""
    flat = x.reshape(x.shape[0], -1).double()
    centred = flat - flat.mean(0)
    evals, evecs = torch.linalg.eigh(centred.T @ centred / flat.shape[0])
    evals, evecs = evals.flip(0), evecs.flip(1)
    s2 = evals[k:].mean()
    return flat.mean(0), evals[:k] - s2, s2, evecs[:, :k]


@pytest.mark.parametrize("n", [20, 100], ids=["n<d", "n>d"])
def test_fit_equals_dense_tipping_bishop(n):
    g = torch.Generator().manual_seed(n)
    x = (
        0.4 * torch.randn(n, C, S, S, generator=g) * torch.linspace(0.2, 1, D).view(C, S, S)
    ).tanh()
    p = fit_gaussian_prior(x, 4, flips=False, dtype=torch.float64)
    mean, lam, s2, basis = _dense_ppca(x, 4)
    assert (p.mean - mean).abs().max() < 1e-12
    assert (p.lam - lam).abs().max() < 1e-10
    assert abs(float(p.s2) - float(s2)) < 1e-12
    proj = p.components @ p.components.T
    assert (proj - basis @ basis.T).abs().max() < 1e-8
    assert (p.components.T @ p.components - torch.eye(4, dtype=torch.float64)).abs().max() < 1e-12
    assert p.metadata["num_images"] == n and p.metadata["num_samples"] == n


def test_fit_with_flips_is_the_fit_of_the_mirrored_data():
    x = torch.rand(6, C, S, S, generator=torch.Generator().manual_seed(2)) * 2 - 1
    p = fit_gaussian_prior(x, 3, flips=True, dtype=torch.float64)
    q = fit_gaussian_prior(torch.cat([x, x.flip(-1)]), 3, flips=False, dtype=torch.float64)
    assert torch.allclose(p.mean, q.mean, atol=1e-14) and torch.allclose(p.lam, q.lam, atol=1e-12)
    image = p.mean.view(C, S, S)
    assert torch.allclose(image, image.flip(-1), atol=1e-14)
    assert p.metadata["num_samples"] == 12


def test_fit_rejects_impossible_requests():
    x = torch.rand(5, C, S, S) * 2 - 1
    with pytest.raises(UsageError, match="use 1 to 8"):
        fit_gaussian_prior(x, 9)  # 10 samples with flips: s2 needs a discarded direction
    with pytest.raises(UsageError):
        fit_gaussian_prior(x, 0)
    with pytest.raises(InputError, match="identical"):
        fit_gaussian_prior(x[:1].expand(5, -1, -1, -1), 2, flips=False)
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        fit_gaussian_prior(x * 255, 2)


# ---------------------------------------------------------------------------------- folders


def _png(path, color, size=(10, 10), mode="RGB"):
    Image.new(mode, size, color).save(path)


def test_decode_handles_modes_crop_and_exif(tmp_path):
    def decoded(path):
        return ((decode_image(path.read_bytes(), 8) + 1) * 127.5).round()

    _png(tmp_path / "rgba.png", (10, 20, 30, 0), mode="RGBA")
    assert decoded(tmp_path / "rgba.png").view(3, -1).T.unique(dim=0).tolist() == [[10, 20, 30]]
    _png(tmp_path / "gray.png", 77, mode="L")
    assert decoded(tmp_path / "gray.png").unique().tolist() == [77]
    Image.fromarray(np.full((6, 9), 40000, np.uint16)).save(tmp_path / "gray16.png")
    assert decoded(tmp_path / "gray16.png").unique().tolist() == [round(40000 * 255 / 65535)]
    bands = np.zeros((10, 30, 3), np.uint8)
    bands[:, :10], bands[:, 10:20], bands[:, 20:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(bands).save(tmp_path / "wide.png")  # centre crop keeps the green band only
    assert decoded(tmp_path / "wide.png").view(3, -1).T.unique(dim=0).tolist() == [[0, 255, 0]]
    tall = np.zeros((20, 10, 3), np.uint8)
    tall[:10] = (255, 255, 255)  # white top half; EXIF orientation 6 rotates it to the side
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(tall).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    out = decoded(tmp_path / "rotated.jpg")
    assert out.shape == (3, 8, 8)
    assert out[:, :, :3].mean() < 20 and out[:, :, 5:].mean() > 235  # white ended up on the right


def test_fit_from_folder_end_to_end(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    colors = [(200, 30, 60), (10, 220, 90), (90, 90, 250), (0, 0, 0)]
    for i, color in enumerate(colors):
        _png(folder / f"c{i}.png", color, size=(10 + i, 10))
    Image.new("L", (12, 12), 128).save(folder / "gray.PNG")
    Image.new("RGB", (16, 16), (255, 255, 0)).save(folder / "photo.jpg", quality=100)
    (folder / "copy.png").write_bytes((folder / "c0.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "notes.txt").write_text("not an image")

    prior, report = fit_from_folder(folder, size=8, components=2)
    assert report["images"] == 6 and report["samples"] == 12 and report["components"] == 2
    assert [f["file"].endswith("copy.png") for f in report["duplicates"]] == [True]
    assert [s["file"].endswith("broken.png") for s in report["skipped"]] == [True]
    assert prior.image_size == 8 and prior.channels == 3
    expected = (
        torch.tensor(colors + [(128, 128, 128), (255, 255, 0)]).double().mean(0)
    ) / 127.5 - 1
    got = prior.mean.view(3, -1).double().mean(1)
    assert torch.allclose(got, expected, atol=1.5 / 127.5)  # the JPEG may be off by one level

    out = tmp_path / "priors" / "mine.pt"
    result = fit_command(folder, out, size=8, components=2, flips=True)
    assert result["output"] == str(out) and result["bytes"] == out.stat().st_size
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()
    loaded = GaussianPrior.load(out)
    assert torch.equal(loaded.mean, prior.mean) and loaded.metadata["num_images"] == 6
    assert sorted(os.listdir(out.parent)) == ["mine.pt"]  # no temp file left behind
    with pytest.raises(OutputError, match="exists"):
        fit_command(folder, out, size=8, components=2, flips=True)
    assert fit_command(folder, out, 8, 1, False, overwrite=True)["components"] == 1
    with pytest.raises(OutputError, match="is a folder"):
        fit_command(folder, tmp_path, size=8, components=2, flips=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_unusable_folders_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        fit_from_folder(tmp_path / "nowhere", 8, 2)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        fit_from_folder(tmp_path / "file.png", 8, 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no usable image"):
        fit_from_folder(empty, 8, 2)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"garbage")
    (junk / "readme.md").write_text("hi")
    with pytest.raises(InputError, match="no usable image.*1 file"):
        fit_from_folder(junk, 8, 2)
    few = tmp_path / "few"
    few.mkdir()
    _png(few / "a.png", (1, 2, 3))
    _png(few / "b.png", (200, 2, 3))
    with pytest.raises(UsageError, match="--components 5"):
        fit_from_folder(few, 8, 5)


# ------------------------------------------------------------------------------ shipped prior


def test_shipped_prior_is_a_64px_face_prior():
    from conftest import shared

    from guidestack.plugins.faces.align import align_face

    path = shipped_prior_path("gaussian-faces-64")
    assert path.stat().st_size < 5_000_000
    p = load_shipped_prior()
    assert (p.name, p.kind, p.image_size, p.channels) == ("gaussian-faces-64", "gaussian", 64, 3)
    assert p.num_components == SHIPPED_COMPONENTS and p.metadata["num_images"] == 75
    assert p.metadata["flips"] and "derived statistics" in p.metadata["source"]
    u = p.components.double()
    assert (u.T @ u - torch.eye(p.num_components, dtype=torch.float64)).abs().max() < 1e-5

    # the training faces, read independently of fit.py: each photo decoded with Pillow (at the
    # JPEG reduction the fit used) and cut out along the landmarks recorded in the prior's file
    faces = []
    for face in p.metadata["faces"]:
        folder, name = face["face"].split("#")[0].split("/")
        with Image.open(shared("faces", folder, name)) as im:
            scale = face["decoded_at"]
            im.draft("RGB", (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
            arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32) / 127.5 - 1
        photo = torch.from_numpy(arr).permute(2, 0, 1)
        faces.append(align_face(photo, torch.tensor(face["landmarks"]), 64)[0])
    assert len(faces) == 75
    target = torch.stack(faces).mean(0)
    target = (target + target.flip(-1)) / 2
    mean = p.mean.view(3, 64, 64)
    corr = torch.corrcoef(torch.stack([mean.reshape(-1), target.reshape(-1)]))[0, 1]
    assert corr > 0.99
    # and a face-shaped image, not just any smooth one: the mean is far from its upside-down copy
    flipped = torch.corrcoef(torch.stack([mean.reshape(-1), target.flip(-2).reshape(-1)]))[0, 1]
    assert flipped < 0.9


def test_refit_reproduces_the_shipped_prior(tmp_path):
    from conftest import SHARED_DATA, shared

    shared("faces", "hq")
    fresh, report = refit_shipped_prior(SHARED_DATA, tmp_path / "refit.pt")
    assert report["images"] == 75 and len(report["duplicates"]) == 7 and not report["skipped"]
    assert [d["face"] for d in report["near_duplicates"]] == ["identity/img11_reflection.jpg#0"]
    shipped = load_shipped_prior()
    assert (fresh.mean - shipped.mean).abs().max() < 1e-5
    assert abs(float(fresh.s2) - float(shipped.s2)) < 1e-7
    # same subspace: every principal angle is ~0 (cosines ~1); no d x d projector needed
    cosines = torch.linalg.svdvals(fresh.components.double().T @ shipped.components.double())
    assert cosines.min() > 1 - 1e-6
    assert torch.allclose(fresh.lam, shipped.lam, rtol=1e-5)
