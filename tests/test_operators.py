"""Measurement operators as solvers use them: pseudo-inverses (exact, minimum-norm), adjoints,
which compositions have a closed-form H^+, measurement sizes, and y kept at its own size."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLES

import guidestack as gs
from guidestack.engine.context import Observation
from guidestack.engine.errors import RecipeError
from guidestack.engine.recipe import validate
from guidestack.engine.refs import DegradationRef, measurement_side
from guidestack.io.images import read_image, to_square
from guidestack.plugins.degradations.apply import build_spec
from guidestack.plugins.degradations.stochastic import generator_for

SIDE = 16
#: every operator with a closed-form pseudo-inverse, with whether any y is in its range
#: (surjective) or only y = H(z) is (projections: the measurement space is the known pixels)
WITH_PINV = {
    "identity": ({"use": "identity"}, True),
    "downsample-area": ({"use": "downsample", "factor": 4}, True),
    "downsample-bicubic": ({"use": "downsample", "factor": 4, "mode": "bicubic"}, True),
    "grayscale-bt601": ({"use": "grayscale"}, True),
    "grayscale-mean": ({"use": "grayscale", "weights": "mean"}, True),
    "mask": ({"use": "mask"}, False),
    "box-mask": ({"use": "box-mask"}, False),
    "pixel-subsample": ({"use": "pixel-subsample", "ratio": 0.3}, False),
    "gaussian-blur-circular": ({"use": "gaussian-blur-kernel", "sigma": 1.5, "boundary": "circular"}, False),
    "motion-blur-circular": ({"use": "motion-blur-kernel", "length": 5, "angle": 30, "boundary": "circular"}, False),
    "gray-then-mask": ({"use": "compose", "ops": [{"use": "grayscale"}, {"use": "mask"}]}, False),
    "gray-then-downsample": ({"use": "compose", "ops": [{"use": "grayscale", "weights": "mean"}, {"use": "downsample", "factor": 2}]}, True),
    "downsample-then-mask": ({"use": "compose", "ops": [{"use": "downsample", "factor": 2}, {"use": "box-mask"}]}, False),
}  # fmt: skip


def user_mask(n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return (torch.rand(n, 1, SIDE, SIDE, generator=g) < 0.3).float()


def bound(registry, spec: dict, n: int = 2, dtype=torch.float64):
    op = DegradationRef(**spec).build(registry)
    op.prepare(Observation(image=torch.zeros(n, 3, SIDE, SIDE, dtype=dtype), mask=user_mask(n)))
    return op


def random_x(n: int = 2, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def measurement(op, n: int, surjective: bool, seed: int, dtype=torch.float64) -> torch.Tensor:
    """A random y of H's measurement space: any y for a surjective H, else H(z)."""
    shape = op(random_x(n, 99, dtype)).shape
    if surjective:
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return op(random_x(n, seed, dtype))


def dense(op, n_channels: int = 3) -> torch.Tensor:
    """The operator as a matrix ``[M, d]`` for one sample (its first)."""
    d = n_channels * SIDE * SIDE
    basis = torch.eye(d, dtype=torch.float64).view(d, n_channels, SIDE, SIDE)
    rows = [op(basis[i : i + 1].expand(2, -1, -1, -1))[:1].reshape(-1) for i in range(d)]
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("name", list(WITH_PINV))
def test_pseudo_inverse_is_an_exact_right_inverse_on_random_y(registry, name):
    spec, surjective = WITH_PINV[name]
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        op = bound(registry, spec, dtype=dtype)
        assert op.has_pinv and op.linear, name
        y = measurement(op, 2, surjective, seed=1, dtype=dtype)
        assert float((op(op.pinv(y)) - y).abs().max()) < tol, (name, dtype)


@pytest.mark.parametrize("name", list(WITH_PINV))
def test_pseudo_inverse_is_the_minimum_norm_solution(registry, name):
    """``H^+ y`` equals the dense Moore-Penrose pseudo-inverse applied to y, so among all x with
    ``H x = y`` it has the least norm (checked directly too: adding a null-space vector grows it)."""
    spec, surjective = WITH_PINV[name]
    op = bound(registry, spec)
    a = dense(op)
    y = measurement(op, 2, surjective, seed=2)
    ours = op.pinv(y)[0].reshape(-1)
    reference = torch.linalg.pinv(a, atol=1e-9) @ y[0].reshape(-1)
    assert torch.allclose(ours, reference, atol=1e-8), name
    z = random_x(2, 5)[0].reshape(-1)
    null = z - torch.linalg.pinv(a, atol=1e-9) @ (a @ z)  # a direction H does not see
    if float(null.norm()) > 1e-6:
        assert float((a @ null).abs().max()) < 1e-8
        assert float((ours + 0.1 * null).norm()) > float(ours.norm())
        assert abs(float(ours @ null)) < 1e-8 * float(null.norm())  # H^+ y is orthogonal to it


LINEAR = {
    **{k: v for k, (v, _) in WITH_PINV.items()},
    "gaussian-blur-reflect": {"use": "gaussian-blur-kernel", "sigma": 1.0},
    "motion-blur-conv": {"use": "motion-blur-kernel", "length": 5, "method": "conv"},
    "blind-blur": {"use": "blind-blur", "size": 5},
    "mask-then-downsample": {"use": "compose", "ops": [{"use": "mask"}, {"use": "downsample", "factor": 2}]},
}  # fmt: skip


@pytest.mark.parametrize("name", list(LINEAR))
def test_adjoint_satisfies_the_inner_product_identity(registry, name):
    op = bound(registry, LINEAR[name])
    x = random_x(2, 3)
    y = torch.randn(op(x).shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    left = (op(x) * y).flatten(1).sum(1)
    right = (x * op.adjoint(y)).flatten(1).sum(1)
    assert torch.allclose(left, right, rtol=1e-10, atol=1e-10), name


def test_operators_without_a_closed_form_pseudo_inverse_say_so(registry):
    for spec in (
        {"use": "gaussian-blur-kernel", "sigma": 1.0},  # reflect boundary
        {"use": "compose", "ops": [{"use": "mask"}, {"use": "downsample", "factor": 2}]},
        {"use": "jpeg"},
    ):
        op = bound(registry, spec, dtype=torch.float32)
        assert not op.has_pinv, spec
        with pytest.raises(NotImplementedError, match="pseudo-inverse"):
            op.pinv(op(random_x(2, 0, torch.float32)))
    # ddnm needs H^+: the recipe is refused with the operator's path
    raw = {"description": "t", "stage": [{"use": "ddnm", "operator": {"use": "jpeg"}}]}
    with pytest.raises(RecipeError, match=r"stage\[0\]\.operator\.use.*pseudo-inverse"):
        validate(raw, registry, "<t>")
    raw["stage"][0]["operator"] = {"use": "gaussian-blur-kernel", "boundary": "circular"}
    validate(raw, registry, "<t>")


def test_circular_blur_cuts_the_spectrum_below_rcond_and_conv_matches_fft(registry):
    op = bound(registry, {"use": "gaussian-blur-kernel", "sigma": 2.0, "boundary": "circular"})
    singular = torch.linalg.svdvals(dense(op))
    kept = singular[singular > 1e-9]
    assert float(kept.min()) >= 0.03 - 1e-9 and float(kept.max()) == pytest.approx(1.0)
    assert float(op.pinv(op(random_x())).abs().max()) < 1 / 0.03 * 10  # bounded inverse
    x = random_x(2, 1, torch.float32)
    fft = bound(registry, {"use": "motion-blur-kernel", "length": 7}, dtype=torch.float32)
    conv = bound(registry, {"use": "motion-blur-kernel", "length": 7, "method": "conv"})
    assert torch.allclose(fft(x), conv(x), atol=1e-5)


def test_free_form_mask_is_a_projection_once_drawn(registry):
    op = build_spec("free-form-mask:3", registry)
    op.use_generators([generator_for(3), generator_for(4)])
    x = random_x(2, 0, torch.float32)
    y = op(x)
    assert op.has_pinv and torch.equal(op.pinv(y), y) and torch.equal(op(op.pinv(y)), y)
    assert float(op.mask.sum()) > 0


def test_mask_operator_reads_a_file(registry, tmp_path):
    op = DegradationRef(use="mask", path=str(EXAMPLES / "astronaut_mask.png")).build(registry)
    assert not op.needs_mask(op.options)
    op.prepare(Observation(image=torch.zeros(1, 3, 32, 32)))
    expected = to_square(
        read_image(EXAMPLES / "astronaut_mask.png", kind="mask").tensor, 32, kind="mask"
    )[0]
    assert torch.equal(op.mask[0], expected)
    assert op.needs_mask(DegradationRef(use="mask").build(registry).options)


def test_measurement_sides_and_the_exact_low_resolution_observation(registry):
    down = DegradationRef(use="downsample", factor=4).build(registry)
    assert down.measurement_side(64) == 16 and down.output_side(64) == 16
    full = DegradationRef(use="downsample", factor=4, observation="full").build(registry)
    assert full.measurement_side(64) == 64
    chain = {"use": "compose", "ops": [{"use": "grayscale"}, {"use": "downsample", "factor": 2}]}
    assert DegradationRef(**chain).build(registry).measurement_side(64) == 32
    # a high-contrast 16x16 photo: through the prior-sized round trip (bicubic up, clamped to
    # [-1, 1]) measure() is off by > 0.1; kept at its own size it is exact
    y = torch.sign(torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    y = y.expand(1, 3, 16, 16).contiguous()
    upsampled = to_square(y, 64)[0]
    assert float((down.measure(upsampled) - y).abs().max()) > 0.1
    obs = Observation(image=upsampled, measurement=y)
    assert torch.equal(down.observed(obs), y)
    assert torch.equal(down.observed(Observation(image=upsampled)), down.measure(upsampled))
    # the recipe's operators decide the side the API keeps y at
    recipe = gs.load_recipe("ddnm-sr4")
    assert measurement_side(recipe.stages, registry, 64) == 16
    assert measurement_side(gs.load_recipe("ddnm-inpaint").stages, registry, 64) is None
    two = {
        "description": "t",
        "sampler": {"kind": "ddpm"},
        "stage": [
            {"use": "unmasked-region", "operator": {"use": "downsample", "factor": 2}},
            {"use": "ddnm", "operator": {"use": "downsample", "factor": 4}},
        ],
    }
    with pytest.raises(RecipeError, match="different sizes"):
        measurement_side(validate(two, registry, "<t>").stages, registry, 64)


def test_api_keeps_a_low_resolution_photo_at_its_size_and_outputs_k_times_it(monkeypatch):
    prior = gs.load_prior("gaussian-faces-64")
    recipe = gs.load_recipe("ddnm-sr4", set={"sampler.steps": 10})
    photo = read_image(EXAMPLES / "astronaut_lr16.png").tensor
    seen = []
    original = DegradationRef.build

    def spy(self, reg):  # record the observation the operator is bound to
        op = original(self, reg)
        prepare = op.prepare
        op.prepare = lambda obs: (seen.append(obs), prepare(obs))[1]
        return op

    monkeypatch.setattr(DegradationRef, "build", spy)
    out = gs.run(recipe, prior, photo, seed=0, upsampler="bicubic")
    assert torch.equal(seen[-1].measurement[0], photo)  # y never resampled
    assert seen[-1].image.shape[-1] == 64  # the picture the other stages see
    assert tuple(out.image.shape) == (3, 64, 64)  # x4 of the 16x16 input
    assert out.entry["output"]["size"] == [64, 64]
    (consistency,) = out.entry["stages"]["ddnm"]["consistency"]
    assert consistency < 0.05  # H(x) against the photo's own 16x16 pixels (10 steps)
