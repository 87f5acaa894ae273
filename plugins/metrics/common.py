"""What every metric shares: the unavailability error and input checks."""

from __future__ import annotations

import torch

from guidestack.engine.errors import GuidestackError


class MetricUnavailable(GuidestackError):
    """A metric's network weights are missing (the project's machines are offline)."""

    exit_code = 2


def check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """``x`` and ``y`` must be two batches ``[N, C, H, W]`` of the same shape."""
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(
            f"{what}: expected two batches [N, C, H, W] of one shape, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
