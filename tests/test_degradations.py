"""Degradation operators H: forward models, observation round trips, kernels, blind parameters,
compositions, and recipe validation of nested operator references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import EXAMPLES

from guidestack.engine.context import Observation
from guidestack.engine.errors import InputError, RecipeError
from guidestack.engine.recipe import validate
from guidestack.engine.refs import DegradationRef
from guidestack.io.images import read_image, to_square
from guidestack.plugins.degradations.blur import blur, gaussian_kernel, kernel_width, motion_kernel
from guidestack.plugins.degradations.linear import LUMA

NAMES = (
    "identity",
    "downsample",
    "grayscale",
    "mask",
    "box-mask",
    "pixel-subsample",
    "gaussian-blur-kernel",
    "motion-blur-kernel",
    "blind-blur",
    "compose",
)


def build(registry, use: str, **options):
    return DegradationRef(use=use, **options).build(registry)


def faces(n: int = 2, size: int = 32) -> torch.Tensor:
    """Smooth random images in [-1, 1] (low-pass noise, so resampling errors are meaningful)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, size // 4, size // 4, generator=g)
    return torch.tanh(F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False))


def test_all_operators_registered_with_descriptions(registry):
    assert set(NAMES) <= set(registry.names("degradation"))
    for name in NAMES:
        entry = registry.get("degradation", name)
        assert entry.description and entry.options is not None, name


def test_every_severity_level_builds_and_grows(registry):
    x = faces(1, 64)
    for name in NAMES:
        cls = registry.get("degradation", name).obj
        if not cls.severities:
            continue
        assert sorted(cls.severities) == [1, 2, 3, 4, 5], name
        errors = []
        for level in range(1, 6):
            op = cls.at_severity(level, registry=registry)
            op.prepare(Observation(image=x))
            errors.append(float((op.simulate(x) - x).pow(2).mean()))
        assert errors == sorted(errors), (name, errors)  # more severe = further from the truth
    with pytest.raises(ValueError, match="severity 9"):
        registry.get("degradation", "downsample").obj.at_severity(9)


def test_downsample_measure_recovers_the_low_resolution_input(registry):
    """A 16x16 face given to a 64x64 prior is resized bicubically by the CLI; ``measure`` inverts
    that resize, returning the user's low-resolution pixels (area-pooling would blur them)."""
    op = build(registry, "downsample", factor=4)
    hr, _ = to_square(read_image(EXAMPLES / "astronaut.png").tensor[None], 64)
    lr = op(hr)
    assert lr.shape == (1, 3, 16, 16)
    assert torch.allclose(lr, F.avg_pool2d(hr, 4), atol=1e-6)  # area = 4x4 block means
    upsampled, _ = to_square(lr, 64)  # what the CLI does to a 16x16 input
    exact = float((op.measure(upsampled) - lr).pow(2).mean().sqrt())
    pooled = float((F.avg_pool2d(upsampled, 4) - lr).pow(2).mean().sqrt())
    assert exact < 0.005 < 0.03 < pooled, (exact, pooled)  # measured: 0.0013 vs 0.053
    assert torch.equal(op.simulate(hr), upsampled)
    full = build(registry, "downsample", factor=4, observation="full")
    assert torch.equal(full.measure(hr), lr)
    bicubic = build(registry, "downsample", factor=4, mode="bicubic")
    assert bicubic(hr).shape == (1, 3, 16, 16)


def test_grayscale_is_bt601_luma_and_simulate_keeps_rgb(registry):
    op = build(registry, "grayscale")
    x = faces(2)
    gray = op(x)
    assert gray.shape == (2, 1, 32, 32)
    expected = sum(w * x[:, c : c + 1] for c, w in enumerate(LUMA))
    assert torch.allclose(gray, expected, atol=1e-6)
    shown = op.simulate(x)
    assert shown.shape == x.shape and torch.equal(shown[:, 0], shown[:, 2])
    assert torch.allclose(op.measure(shown), gray, atol=1e-6)


def test_mask_needs_the_observation_mask_and_zeroes_missing_pixels(registry):
    op = build(registry, "mask")
    x = faces(2)
    with pytest.raises(InputError, match="--mask"):
        op.prepare(Observation(image=x))
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:16, 8:24] = 1.0
    mask[1, :, 20:, :] = 1.0
    op.prepare(Observation(image=x, mask=mask))
    y = op(x)
    assert torch.equal(y[0, :, 8:16, 8:24], torch.zeros(3, 8, 16))
    assert torch.equal(y[0, :, :8], x[0, :, :8])
    assert torch.equal(y[1, :, 20:], torch.zeros(3, 12, 32))
    observed = x.clone()
    observed[mask.expand_as(x) > 0] = 1.0  # a masked input is white in the hole
    assert torch.equal(op.measure(observed), y)
    assert torch.equal(op.mask, mask)
    entry = registry.get("degradation", "mask")
    assert entry.obj.needs_mask(entry.options())


def test_box_mask_and_pixel_subsample(registry):
    x = faces(3, 64)
    box = build(registry, "box-mask", box=(0.25, 0.25, 0.5, 0.5))
    box.prepare(Observation(image=x))
    assert float(box.mask.mean()) == pytest.approx(0.25)
    assert torch.equal(box.mask[:, :, 16:48, 16:48], torch.ones(3, 1, 32, 32))
    with pytest.raises(ValueError):
        DegradationRef(use="box-mask", box=(0.8, 0.0, 0.5, 0.5)).build(registry)

    cs = build(registry, "pixel-subsample", ratio=0.1, seed=4)
    cs.prepare(Observation(image=x))
    kept = 1 - cs.mask
    assert float(kept.mean()) == pytest.approx(0.1, abs=1e-3)
    y = cs(x)
    assert torch.equal(y, x * kept)  # every channel of a kept pixel, same pattern for all samples
    again = build(registry, "pixel-subsample", ratio=0.1, seed=4)
    again.prepare(Observation(image=x[:1]))
    assert torch.equal(again.mask, cs.mask)
    other = build(registry, "pixel-subsample", ratio=0.1, seed=5)
    other.prepare(Observation(image=x))
    assert not torch.equal(other.mask, cs.mask)


def test_gaussian_kernel_width_and_blur_match_a_reference_convolution(registry):
    k = gaussian_kernel(25, 2.0)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(kernel_width(k[None])[0]) == pytest.approx(2.0, rel=0.01)
    rotated = gaussian_kernel(25, 3.0, 1.0, angle=90.0)
    assert torch.allclose(rotated, gaussian_kernel(25, 1.0, 3.0), atol=1e-6)
    op = build(registry, "gaussian-blur-kernel", sigma=1.5)
    x = faces(2)
    kernel = op.kernel()
    size = kernel.shape[-1]
    reference = F.conv2d(
        F.pad(x, (size // 2,) * 4, mode="reflect"), kernel.expand(3, 1, size, size), groups=3
    )
    assert torch.allclose(op(x), reference, atol=1e-5)
    # a blur keeps the mean of a constant image and the image size
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(op(flat), flat, atol=1e-5)


def test_motion_kernel_is_a_normalised_streak(registry):
    k = motion_kernel(9, length=7, angle=0.0)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.count_nonzero(k[4]) == 7 and float(k[:4].abs().sum()) == 0.0  # one row
    vertical = motion_kernel(9, length=7, angle=90.0)
    assert torch.allclose(vertical, k.T, atol=1e-6)
    op = build(registry, "motion-blur-kernel", length=5, angle=45)
    x = faces(1)
    assert op(x).shape == x.shape


def test_blind_blur_has_one_parameter_set_per_sample(registry):
    x = faces(3)
    for kind in ("softmax", "network", "gaussian"):
        op = build(registry, "blind-blur", size=9, kernel=kind, init_sigma=1.5, hidden=16)
        op.prepare(Observation(image=x))
        assert op.blind and op.suggested_lr is not None
        assert all(p.shape[0] == 3 for p in op.parameters() if p.requires_grad), kind
        kernels = op.kernels()
        assert kernels.shape == (3, 9, 9)
        assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
        assert bool((kernels >= 0).all())
        assert torch.equal(kernels[0], kernels[2])  # same initial values for every sample
        op(x).pow(2).sum().backward()
        grads = [p.grad for p in op.parameters() if p.requires_grad]
        assert all(g is not None and bool(g.abs().sum() > 0) for g in grads), kind
        assert len(op.describe()["kernel_sigma"]) == 3
    softmax = build(registry, "blind-blur", size=9, init_sigma=1.5)
    softmax.prepare(Observation(image=x[:1]))
    assert torch.allclose(softmax.kernels()[0], gaussian_kernel(9, 1.5), atol=1e-6)


def test_blur_of_a_sample_does_not_depend_on_its_batch():
    x = faces(3)
    kernels = torch.rand(3, 7, 7)
    together = blur(x, kernels)
    for i in range(3):
        assert torch.equal(blur(x[i : i + 1], kernels[i : i + 1])[0], together[i])


def test_compose_applies_in_order_and_chains_measure(registry):
    op = build(
        registry,
        "compose",
        ops=[{"use": "gaussian-blur-kernel", "sigma": 1.0}, {"use": "downsample", "factor": 2}],
    )
    blur_op = build(registry, "gaussian-blur-kernel", sigma=1.0)
    down = build(registry, "downsample", factor=2)
    x = faces(2)
    op.prepare(Observation(image=x))
    assert torch.allclose(op(x), down(blur_op(x)), atol=1e-6)
    y = op.simulate(x)
    assert y.shape == x.shape
    assert torch.allclose(op.measure(y), op(x), atol=0.01)  # = H(x) up to the clamp to [-1, 1]
    # a mask after a downsample adapts to the low resolution (missing if any pixel is)
    masked = build(registry, "compose", ops=[{"use": "downsample", "factor": 2}, {"use": "mask"}])
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 0, 0] = 1.0
    masked.prepare(Observation(image=x, mask=mask))
    low = masked(x)
    assert low.shape == (2, 3, 16, 16) and float(low[:, :, 0, 0].abs().sum()) == 0.0
    assert torch.equal(masked.mask, mask)
    entry = registry.get("degradation", "compose")
    assert entry.obj.needs_mask(entry.options.model_validate({"ops": [{"use": "mask"}]}))


def test_every_operator_is_differentiable(registry):
    x = faces(2).requires_grad_(True)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :8] = 1.0
    for name in NAMES:
        options = {"ops": [{"use": "downsample", "factor": 2}]} if name == "compose" else {}
        op = build(registry, name, **options)
        op.prepare(Observation(image=x.detach(), mask=mask))
        (grad,) = torch.autograd.grad(op(x).pow(2).sum(), x)
        assert bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0), name


def shred_recipe(registry, operator):
    return validate(
        {"description": "t", "stage": [{"use": "shred", "operator": operator}]}, registry, "<test>"
    )


def test_recipe_validation_reports_nested_operator_paths(registry):
    ok = shred_recipe(
        registry,
        {
            "use": "compose",
            "ops": [
                {"use": "gaussian-blur-kernel", "sigma": 2},
                {"use": "downsample", "factor": 4},
            ],
        },
    )
    assert ok.stages[0].operator.use == "compose"
    with pytest.raises(RecipeError) as info:
        shred_recipe(
            registry,
            {"use": "compose", "ops": [{"use": "downsampel"}, {"use": "downsample", "factr": 4}]},
        )
    text = str(info.value)
    assert "stage[0].operator.ops[0].use" in text and "did you mean 'downsample'" in text
    assert "stage[0].operator.ops[1].factr" in text
    with pytest.raises(RecipeError, match=r"stage\[0\]\.operator\.factor"):
        shred_recipe(registry, {"use": "downsample", "factor": 1})
    with pytest.raises(RecipeError, match="unknown degradation 'jpeg2000'"):
        shred_recipe(registry, {"use": "jpeg2000"})


def test_shred_requires_a_mask_only_for_masking_operators(registry):
    cls = registry.stage("shred")
    needs = cls.requires_for(shred_recipe(registry, {"use": "mask"}).stages[0])
    assert needs == ("mask",)
    nested = {"use": "compose", "ops": [{"use": "mask"}, {"use": "downsample"}]}
    assert cls.requires_for(shred_recipe(registry, nested).stages[0]) == ("mask",)
    assert cls.requires_for(shred_recipe(registry, {"use": "box-mask"}).stages[0]) == ()


#: option variants under which declared capabilities are compared with the built operators
CAPABILITY_VARIANTS = {
    "downsample": [{"mode": "area"}, {"mode": "bicubic"}],
    "gaussian-blur-kernel": [{"boundary": "circular"}, {"boundary": "reflect"}],
    "motion-blur-kernel": [{"boundary": "circular"}, {"boundary": "reflect"}],
    "grayscale": [{"weights": "mean"}, {"weights": "bt601"}],
    "compose": [
        {"ops": [{"use": "gaussian-blur-kernel", "boundary": "circular"}]},
        {"ops": [{"use": "downsample"}, {"use": "grayscale"}]},
        {"ops": [{"use": "grayscale"}, {"use": "downsample", "mode": "bicubic"}]},
        {"ops": [{"use": "downsample", "mode": "bicubic"}, {"use": "mask"}]},
        {"ops": [{"use": "blind-blur"}, {"use": "downsample"}]},
        {"ops": [{"use": "jpeg"}, {"use": "downsample"}]},
    ],
}


def test_declared_capabilities_are_the_operators_own(registry):
    """Options models declare what their operator can do (so recipes are checked without
    importing it): building every operator must give the same answers."""
    from guidestack.engine.refs import DegradationRef

    checked = 0
    for name in registry.names("degradation"):
        for options in CAPABILITY_VARIANTS.get(name, [{}]):
            ref = DegradationRef(use=name, **options)
            declared = ref.capabilities(registry)
            if declared is None:  # undeclared: the check builds the operator
                continue
            op = ref.build(registry)
            actual = {
                what
                for what, has in (
                    ("linear", op.has_adjoint),
                    ("pinv", op.has_pinv),
                    ("coisometry", op.coisometry is not None),
                )
                if has
            }
            assert declared == actual, (name, options)
            checked += 1
    assert checked >= 15
