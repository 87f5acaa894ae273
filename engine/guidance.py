"""Turning a gradient of the summed guidance loss into an update (PGDiff's two rules and more).

All norms are taken PER SAMPLE (and per channel for ``dynamic_channel``), never over the batch,
so a batch gives the same result as single runs.
"""

from __future__ import annotations

import math

import torch

from .errors import NonFiniteError

_TINY = 1e-12


def per_sample_norm(x: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """L2 norm over all non-batch dims (``[N,1,1,1]``) or over H, W per channel (``[N,C,1,1]``)."""
    dims = (2, 3) if per_channel else tuple(range(1, x.dim()))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True)


def mean_shift(
    mean: torch.Tensor, variance: torch.Tensor, grad: torch.Tensor, scale: float
) -> torch.Tensor:
    """PGDiff's classifier-guidance style shift of the posterior mean: ``mu - s * Sigma * g``."""
    return mean - scale * variance * grad


def dynamic_update(
    x_t: torch.Tensor, x_prime: torch.Tensor, grad: torch.Tensor, scale: float, per_channel: bool
) -> torch.Tensor:
    """PGDiff's dynamic guidance weight: ``x' - s * ||x_t - x'|| / ||g|| * g``.

    The step is measured against the size of the unguided move, so the rule is free of the
    model's variance scale; channels whose gradient is zero are left unchanged.
    """
    step = per_sample_norm(x_t - x_prime, per_channel)
    gnorm = per_sample_norm(grad, per_channel)
    factor = torch.where(gnorm > _TINY, step / gnorm.clamp_min(_TINY), torch.zeros_like(gnorm))
    return x_prime - scale * factor * grad


def all_finite(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite, at the cost of one sum in the usual case.

    A NaN or infinity makes the sum non-finite, so a finite sum settles it; only a non-finite
    sum (or an overflow of a huge but finite tensor) pays for the elementwise test.
    """
    if math.isfinite(x.detach().sum().item()):
        return True
    return bool(torch.isfinite(x).all())


def loss_gradient(total: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``d sum(total) / d x0``, refusing NaN/inf so a broken loss cannot poison the image."""
    if not all_finite(total):
        bad = [
            i
            for i, v in enumerate(total.detach().flatten().tolist())
            if v != v or abs(v) == float("inf")
        ]
        raise NonFiniteError(f"guidance loss is not finite for sample(s) {bad}")
    (grad,) = torch.autograd.grad(total.sum(), x0)
    if not all_finite(grad):
        raise NonFiniteError("guidance gradient is not finite")
    return grad


class GraphMemory:
    """Bytes of the intermediate tensors autograd keeps for a backward pass while the context
    is open (each storage once; leaves such as weights and inputs exist anyway and are not
    counted): the memory a guidance gradient costs, device-agnostic.  Through the denoiser
    (``guidance.target = "xt"``) it is the network's activations."""

    def __init__(self) -> None:
        self.peak = 0
        self._seen: set[tuple[str, int]] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.grad_fn is None:
            return tensor
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in self._seen:
            self._seen.add(key)
            self.peak += storage.nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> GraphMemory:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
