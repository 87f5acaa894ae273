"""Reference key lists of official checkpoints (tests/data/*.json) and deterministic weights.

Each JSON file was made by constructing the official model class from the authors' public code
(in a scratch folder, never copied here) and recording its state-dict keys, shapes and buffers.
Its ``golden`` entry is the official forward pass on weights from :func:`seeded_state_dict` (a
reduced-width configuration, stored with it) and a seeded input: so a test can check that our
own implementation computes the same function, not only that it has the same keys.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"


def reference(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def state_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def seeded_state_dict(
    keys: dict[str, list[int]], buffers: dict[str, str], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Well-scaled random weights, each seeded by its key's name so key order does not matter
    (the exact recipe the golden values were made with): fan-in scaled normals for matrices and
    kernels, ``1 + 0.1 z`` for norm weights, ``0.1 z`` for biases; buffers are left to the
    model."""
    out = {}
    for key, shape in keys.items():
        if key in buffers:
            continue
        generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(key.encode()))
        value = torch.randn(shape, generator=generator, dtype=torch.float32)
        if len(shape) >= 2:
            value = value / math.sqrt(max(1, math.prod(shape[1:])))
        else:
            value = value * 0.1 + (1.0 if key.endswith("weight") else 0.0)
        out[key] = value
    return out


def seeded_input(shape: list[int], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_golden(out: torch.Tensor, golden: dict, rtol: float = 1e-4) -> None:
    """Compare a forward pass with the official one (shape, mean |x|, 48 sampled values)."""
    assert list(out.shape) == golden["shape"]
    flat = out.detach().double().flatten()
    scale = golden["abs_mean"]
    assert flat.abs().mean().item() == pytest_approx(scale, rtol)
    values = flat[torch.tensor(golden["indices"])]
    expected = torch.tensor(golden["values"], dtype=torch.float64)
    err = (values - expected).abs().max().item()
    assert err <= rtol * 10 * max(scale, 1e-6), f"max deviation {err:.3g} (mean |out| {scale:.3g})"


def pytest_approx(value: float, rtol: float):
    import pytest

    return pytest.approx(value, rel=rtol * 10)
