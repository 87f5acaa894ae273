"""Shared fixtures: paths to the shared test data, the registry, small priors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples" / "faces"

# The tests use tiny tensors, for which one thread is faster than two (and much faster when the
# machine is busy); CLI subprocesses keep torch's default.
torch.set_num_threads(1)


def shared(*parts: str) -> Path:
    """A file in ../shared/data; the test is skipped with a clear reason if the data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture(scope="session")
def registry():
    from guidestack.engine.registry import load_registry

    return load_registry(blocked=set(), entry_points=False)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
