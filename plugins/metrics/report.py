"""All metrics of a batch of restorations at once, as JSON-able rows (for ``bench`` and run.json).

Each image gets ``psnr`` (dB), ``ssim``, ``lpips`` and ``identity`` (cosine) against its reference;
an unavailable identity metric is recorded as ``None`` with the reason in ``identity_unavailable``,
never as a number.  :func:`summarize` adds means and the cost per image (model calls, seconds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .fidelity import psnr, ssim
from .identity import identity_cosine
from .perceptual import lpips_distance

METRICS = ("psnr", "ssim", "lpips", "identity")


def evaluate(
    restored: torch.Tensor,
    reference: torch.Tensor,
    *,
    metrics: Sequence[str] = METRICS,
    lpips_backbone: str | Path | None = None,
    identity_weights: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One dict per image with the requested ``metrics`` (images ``[N, 3, H, W]`` in [-1, 1]).

    LPIPS without a backbone raises :class:`~guidestack.plugins.metrics.common.MetricUnavailable`
    (ask for fewer metrics to go on without it); identity is reported as unavailable instead.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    rows: list[dict[str, Any]] = [{} for _ in range(restored.shape[0])]
    columns: dict[str, list[Any]] = {}
    if "psnr" in metrics:
        columns["psnr"] = psnr(restored, reference).tolist()
    if "ssim" in metrics:
        columns["ssim"] = ssim(restored, reference).tolist()
    if "lpips" in metrics:
        columns["lpips"] = lpips_distance(restored, reference, backbone=lpips_backbone).tolist()
    if "identity" in metrics:
        result = identity_cosine(restored, reference, weights=identity_weights)
        if result.values is None:
            columns["identity"] = [None] * len(rows)
            columns["identity_unavailable"] = [result.reason] * len(rows)
        else:
            columns["identity"] = result.values.tolist()
    for name, values in columns.items():
        for row, value in zip(rows, values, strict=True):
            row[name] = value
    return rows


def summarize(
    rows: list[dict[str, Any]],
    *,
    model_calls: int | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Mean of every numeric metric over ``rows`` (finite values; PSNR of an exact copy is inf),
    plus ``model_calls_per_image`` and ``seconds_per_image`` when the totals are given."""
    n = len(rows)
    summary: dict[str, Any] = {"images": n}
    for name in METRICS:
        values = [r[name] for r in rows if isinstance(r.get(name), int | float)]
        if name in {k for r in rows for k in r}:
            finite = [v for v in values if math.isfinite(v)]
            summary[name] = sum(finite) / len(finite) if finite else None
            if len(values) > len(finite):
                summary[f"{name}_infinite"] = len(values) - len(finite)
    reasons = {r["identity_unavailable"] for r in rows if "identity_unavailable" in r}
    if reasons:
        summary["identity_unavailable"] = sorted(reasons)[0]
    if model_calls is not None:
        summary["model_calls_per_image"] = model_calls / n if n else None
    if seconds is not None:
        summary["seconds_per_image"] = seconds / n if n else None
    return summary
