"""LPIPS (Zhang et al. 2018) with the ``lpips`` package's calibrated linear heads, offline.

``lpips.LPIPS(net="alex")`` downloads torchvision's ImageNet AlexNet at first use; here the
backbone comes from a file instead: ``backbone=PATH`` (an ``lpips`` backbone state dict such as
the tests' ``lpips_alexnet_backbone.pt``, or a torchvision checkpoint), else torchvision's cache
(``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``).  Without either,
:class:`MetricUnavailable` says where to put the file; nothing is downloaded.  The score is
LPIPS v0.1's usual one: spatially averaged per layer, summed over layers, one value per image.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from guidestack.engine.errors import InputError
from guidestack.plugins.networks import backbone_state, torchvision_cache_path

from .common import MetricUnavailable, check_pair

NETS = ("alex", "vgg")


def backbone_path(net: str = "alex", backbone: str | Path | None = None) -> Path:
    """The backbone file to use, or :class:`MetricUnavailable` saying how to provide one."""
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
    if backbone is not None:
        path = Path(backbone).expanduser()
        if not path.is_file():
            raise MetricUnavailable(f"LPIPS backbone file {path} does not exist")
        return path
    path = torchvision_cache_path(net)
    if not path.is_file():
        raise MetricUnavailable(
            f"LPIPS needs the ImageNet {net} backbone weights, which are not downloaded here "
            f"(offline). Give a backbone file (an lpips backbone state dict such as "
            f"../shared/data/weights/lpips_alexnet_backbone.pt, or torchvision's {path.name}) "
            f"or put torchvision's file at {path}."
        )
    return path


@functools.lru_cache(maxsize=4)
def _load(net: str, path: str, mtime: float, device: str) -> torch.nn.Module:
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" notices
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    try:
        model.net.load_state_dict(backbone_state(Path(path), model.net))
    except InputError as exc:
        raise MetricUnavailable(str(exc).replace("perceptual: ", "LPIPS: ")) from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device)


def load_lpips(
    net: str = "alex",
    backbone: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> torch.nn.Module:
    """The LPIPS network (cached per file and device); see the module docstring."""
    path = backbone_path(net, backbone).resolve()
    return _load(net, str(path), path.stat().st_mtime, str(torch.device(device)))


def lpips_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    net: str = "alex",
    backbone: str | Path | None = None,
) -> torch.Tensor:
    """``[N]`` LPIPS distance of each pair of images in [-1, 1] (0 = identical)."""
    check_pair(x, y, "lpips")
    model = load_lpips(net, backbone, x.device)
    with torch.no_grad():
        values = [model(x[i : i + 1].float(), y[i : i + 1].float()) for i in range(x.shape[0])]
    return torch.cat(values).flatten().to(x.dtype)
