"""The ``torch-module`` restorer: any trained restoration network, from a file.

Three kinds of file:

- a ``torch.export`` program (``.pt2``, ``torch.export.save``) or a TorchScript file
  (``torch.jit.save``): nothing else needed, any architecture;
- a state dict plus ``architecture = "<name>"``: the name of an architecture registered with
  :func:`register_architecture` (plugins add theirs; ``residual-cnn`` is built in), built with
  ``arch_options`` and loaded strictly.  ``key`` picks a nested dict (``params_ema``...).

``call = "y"`` calls ``net(y)``; ``call = "x_t,y,t"`` calls ``net(x_t, y, t)`` with ``t`` a long
tensor of ORIGINAL timesteps (PGDiff's restorer signature), which makes the restorer
t-dependent: the engine then calls it at every step instead of once per run.
``range`` converts [-1, 1] images to what the network expects; ``size`` resizes around it when
the network was trained at another resolution.  The network runs one sample at a time so a
batch equals single runs bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from guidestack.engine.errors import InputError
from guidestack.engine.restorer import Restorer

from .options import TorchModuleOptions

#: architecture name -> factory(**arch_options) returning an ``nn.Module``
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``architecture = name`` available to ``torch-module`` restorers (plugins call this)."""
    if name in ARCHITECTURES and ARCHITECTURES[name] is not factory:
        raise ValueError(f"restorer architecture '{name}' is already registered")
    ARCHITECTURES[name] = factory


class ResidualCNN(nn.Module):
    """A plain residual denoiser (DnCNN-like): ``y + body(y)``; small, easy to train on pairs."""

    def __init__(self, channels: int = 3, width: int = 64, depth: int = 8):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.body(y)


register_architecture("residual-cnn", ResidualCNN)


_LOADED: dict[tuple[Any, ...], nn.Module] = {}


def _load(options: TorchModuleOptions) -> nn.Module:
    path = Path(options.path).expanduser()
    if not path.is_file():
        raise InputError(f"torch-module restorer: {path} does not exist")
    stat = path.stat()
    cache_key = (
        str(path.resolve()),
        stat.st_mtime,
        stat.st_size,
        options.architecture,
        repr(sorted(options.arch_options.items())),
        options.key,
    )
    if cache_key not in _LOADED:
        _LOADED[cache_key] = _read(path, options)
    return _LOADED[cache_key]


def _read(path: Path, options: TorchModuleOptions) -> nn.Module:
    if options.architecture is None and path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module()
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"torch-module restorer: {path} is not a torch.export file: {exc}"
            ) from exc
    if options.architecture is None:
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"torch-module restorer: {path} is not a TorchScript file ({type(exc).__name__}); "
                'for a state dict also set architecture = "<name>"'
            ) from exc
        return net.eval()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"torch-module restorer: cannot read state dict {path}: {exc}") from exc
    if options.key is not None:
        if not isinstance(state, dict) or options.key not in state:
            raise InputError(f"torch-module restorer: {path} has no entry '{options.key}'")
        state = state[options.key]
    if not isinstance(state, dict):
        raise InputError(f"torch-module restorer: {path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        net = ARCHITECTURES[options.architecture](**options.arch_options)
        net.load_state_dict(state)
    except (TypeError, RuntimeError) as exc:
        raise InputError(
            f"torch-module restorer: {path} does not fit architecture '{options.architecture}' "
            f"with {options.arch_options}: {exc}"
        ) from exc
    return net.eval()


class TorchModuleRestorer(Restorer):
    name = "torch-module"
    description = "A trained restoration network from a TorchScript file or a state dict + registered architecture."
    Options = TorchModuleOptions

    def __init__(self, options: TorchModuleOptions | None = None):
        super().__init__(options)
        self.net = _load(self.options)
        # an instance attribute: the engine caches t-independent restorers once per run
        self.depends_on_t = self.options.call != "y"

    def restore(
        self, y: torch.Tensor, x_t: torch.Tensor | None = None, t: int | None = None
    ) -> torch.Tensor:
        o = self.options
        net = self.net.to(y.device)
        dtype = next(iter(net.parameters()), torch.empty(0)).dtype
        size = y.shape[-2:]
        outs = []
        for i in range(y.shape[0]):
            args = [y[i : i + 1]]
            if o.call == "x_t,y,t":
                if x_t is None or t is None:
                    raise ValueError("this restorer needs x_t and t")
                args = [x_t[i : i + 1], y[i : i + 1]]
            args = [self._to_net(a, dtype) for a in args]
            if o.call == "x_t,y,t":
                args.append(torch.full((1,), int(t), dtype=torch.long, device=y.device))
            outs.append(self._from_net(net(*args), size, y.dtype))
        return torch.cat(outs)

    def _to_net(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.options.size is not None and x.shape[-1] != self.options.size:
            s = self.options.size
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        if self.options.range == "0,1":
            x = (x + 1.0) / 2.0
        return x.to(dtype).contiguous()

    def _from_net(self, out: torch.Tensor, size: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        out = out.to(dtype)
        if self.options.range == "0,1":
            out = out * 2.0 - 1.0
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(
                out, size=tuple(size), mode="bicubic", align_corners=False, antialias=True
            )
        return out
