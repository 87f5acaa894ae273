"""Choosing the torch device a run goes on: what the user asked for, checked, else the best
available (cuda, then mps, then cpu)."""

from __future__ import annotations

import torch

from .errors import UsageError

#: device types a run can go on (``meta`` and the like hold no data)
RUNNABLE = ("cpu", "cuda", "mps", "xpu")


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda:1``, ``mps``...) checked against this machine, or the best device
    available when ``None``; a device that cannot run here is a :class:`UsageError`."""
    if isinstance(name, torch.device):
        name = str(name)
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise UsageError(f"--device {name!r} is not a torch device ({exc})") from exc
        if device.type not in RUNNABLE:
            raise UsageError(
                f"--device {name}: a '{device.type}' device cannot run a model; use one of "
                f"{', '.join(RUNNABLE)}"
            )
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: CUDA is not available on this machine; use --device cpu"
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UsageError(
                f"--device {name}: MPS is not available on this machine; use --device cpu"
            )
        xpu = getattr(torch, "xpu", None)
        if device.type == "xpu" and not (xpu is not None and xpu.is_available()):
            raise UsageError(
                f"--device {name}: no Intel GPU (XPU) is available on this machine; use --device cpu"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
