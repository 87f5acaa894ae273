"""Every registered degradation: deterministic under a seed, stronger with each severity, masks
that mark exactly the damaged pixels, batches equal to single images, gradients through H.

The registry is iterated, so an operator added later is covered without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLES

from guidestack.engine.registry import load_registry
from guidestack.io.images import read_image, to_square
from guidestack.plugins.degradations.apply import build_spec, degrade_batch, parse_spec
from guidestack.plugins.degradations.stochastic import Stochastic, generator_for

_REGISTRY = load_registry(blocked=set(), entry_points=False)
ALL = _REGISTRY.names("degradation")
LEVELLED = [n for n in ALL if _REGISTRY.get("degradation", n).obj.severities]
STOCHASTIC = [n for n in LEVELLED if issubclass(_REGISTRY.get("degradation", n).obj, Stochastic)]
#: operators that cannot run on a clean image alone (a user's mask, a list of parts)
NEEDS_INPUT = {"mask", "compose"}


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    images = [read_image(EXAMPLES / f"{n}.png").tensor for n in ("astronaut", "grace_hopper")]
    return torch.stack([to_square(x, 64)[0] for x in images])


def _run(spec: str, x: torch.Tensor, seeds: list[int]):
    op = build_spec(spec, _REGISTRY)
    return degrade_batch(op, x, [generator_for(s) for s in seeds])


def test_catalogue_is_complete():
    wanted = {
        "gaussian-blur-kernel", "motion-blur-kernel", "gaussian-noise", "poisson-noise", "jpeg",
        "downsample", "contrast", "pixelate", "elastic", "random-lines", "random-pixels",
        "box-mask", "free-form-mask", "desaturate", "scratches", "random",
    }  # fmt: skip
    assert wanted <= set(LEVELLED)
    for name in LEVELLED:
        assert sorted(_REGISTRY.get("degradation", name).obj.severities) == [1, 2, 3, 4, 5], name


@pytest.mark.parametrize("name", LEVELLED)
def test_deterministic_under_a_seed(name, faces):
    for level in (1, 5):
        y1, m1 = _run(f"{name}:{level}", faces, [3, 4])
        y2, m2 = _run(f"{name}:{level}", faces, [3, 4])
        assert torch.equal(y1, y2)
        assert (m1 is None) == (m2 is None)
        if m1 is not None:
            assert torch.equal(m1, m2)
    if name in STOCHASTIC and name != "random":
        other, _ = _run(f"{name}:5", faces, [5, 6])
        assert not torch.equal(other, y1), "the seed must matter"


@pytest.mark.parametrize("name", LEVELLED)
def test_severity_is_monotone(name, faces):
    errors = []
    for level in range(1, 6):
        y, _ = _run(f"{name}:{level}", faces, [11, 12])
        assert y.shape == faces.shape and torch.isfinite(y).all()
        assert y.min() >= -1 and y.max() <= 1
        errors.append(((y - faces) ** 2).mean(dim=(1, 2, 3)))
    errors = torch.stack(errors)  # [level, sample]
    assert (errors[0] > 0).all(), f"{name} at severity 1 leaves the image unchanged"
    assert (errors[1:] > errors[:-1]).all(), f"{name}: MSE per level {errors.T.tolist()}"


@pytest.mark.parametrize("name", LEVELLED)
def test_batch_equals_single_images(name, faces):
    both, mask = _run(f"{name}:3", faces, [7, 8])
    for i, seed in enumerate((7, 8)):
        one, one_mask = _run(f"{name}:3", faces[i : i + 1], [seed])
        assert torch.allclose(both[i : i + 1], one, atol=1e-6)
        if mask is not None:
            assert torch.equal(mask[i : i + 1], one_mask)


@pytest.mark.parametrize("name", ["random-lines", "random-pixels", "free-form-mask", "scratches"])
def test_masks_mark_the_damage(name, faces):
    y, mask = _run(f"{name}:3", faces, [1, 2])
    assert mask is not None and mask.shape == (2, 1, 64, 64)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
    changed = (y - faces).abs().amax(dim=1, keepdim=True) > 1e-6
    assert not (changed & (mask == 0)).any(), "pixels outside the mask were changed"
    assert changed[mask == 1].float().mean() > 0.9
    # a stronger level damages a superset of the pixels (same seed)
    _, stronger = _run(f"{name}:5", faces, [1, 2])
    assert (stronger >= mask).all() and stronger.sum() > mask.sum()


@pytest.mark.parametrize("name", [n for n in STOCHASTIC if n != "random"] + ["jpeg", "contrast"])
def test_forward_is_differentiable_and_fixed_once_drawn(name, faces):
    op = build_spec(f"{name}:3", _REGISTRY)
    if isinstance(op, Stochastic):
        op.use_generators([generator_for(0), generator_for(1)])
    x = faces.clone().requires_grad_(True)
    y = op(x)
    assert torch.equal(y.detach(), op(faces))  # the random part is held, not redrawn
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_random_picks_per_image_from_the_seed(faces):
    op = build_spec("random", _REGISTRY)
    seeds = list(range(12))
    picks = []
    for s in seeds:
        degrade_batch(op, faces[:1], [generator_for(s)])
        picks.append(op.picks()[0])
    assert len({p["op"] for p in picks}) >= 4, picks
    assert {p["severity"] for p in picks} <= {1, 2, 3, 4, 5} and len(
        {p["severity"] for p in picks}
    ) > 1
    again = build_spec("random", _REGISTRY)
    degrade_batch(again, faces[:1], [generator_for(5)])
    assert again.picks()[0] == picks[5]
    fixed = build_spec("random:4", _REGISTRY)
    degrade_batch(fixed, faces[:1], [generator_for(5)])
    assert fixed.picks()[0] == {"op": picks[5]["op"], "severity": 4}


def test_jpeg_forward_tracks_the_real_codec(faces):
    op = build_spec("jpeg:2", _REGISTRY)
    real = op.simulate(faces)
    smooth = op(faces)
    assert ((smooth - real) ** 2).mean() < 0.25 * ((faces - real) ** 2).mean() + 1e-3


def test_specs_and_errors():
    from guidestack.engine.errors import UsageError

    assert parse_spec("jpeg:2") == ("jpeg", 2) and parse_spec("jpeg") == ("jpeg", None)
    assert build_spec("jpeg", _REGISTRY).options.quality == 20  # severity 3 by default
    for bad in ("nope:2", "jpeg:9", "jpeg:x", ":3"):
        with pytest.raises(UsageError):
            build_spec(bad, _REGISTRY)
    with pytest.raises(UsageError):
        build_spec("jpeg:2", _REGISTRY, quality=500)
