"""RRDB networks (ESRGAN's residual-in-residual dense blocks), key-compatible with the weights of
Real-ESRGAN (BasicSR's ``RRDBNet``) and of PGDiff's time-conditioned restorer (mmediting's).

Both name their layers identically (``conv_first``, ``body.<i>.rdb<j>.conv<k>``, ``conv_body``,
``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``).  Scales 1 and 2 first fold pixels into
channels (pixel unshuffle by 4 / scale) so the trunk always upsamples by 4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing all earlier features; the output is scaled by 0.2."""

    def __init__(self, channels: int = 64, growth: int = 32):
        super().__init__()
        for i in range(5):
            out = channels if i == 4 else growth
            self.add_module(f"conv{i + 1}", nn.Conv2d(channels + i * growth, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for i in range(1, 5):
            conv = getattr(self, f"conv{i}")
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, channels: int = 64, growth: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, growth)
        self.rdb2 = ResidualDenseBlock(channels, growth)
        self.rdb3 = ResidualDenseBlock(channels, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator: ``scale`` in {1, 2, 4}; input and output in [0, 1]
    for Real-ESRGAN weights (PGDiff's restorer works in [-1, 1])."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        channels: int = 64,
        num_blocks: int = 23,
        growth: int = 32,
        scale: int = 4,
    ):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, not {scale}")
        self.scale = scale
        self.fold = 4 // scale
        self.conv_first = nn.Conv2d(in_channels * self.fold**2, channels, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(num_blocks)))
        self.conv_body = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_hr = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_last = nn.Conv2d(channels, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold > 1:
            if x.shape[-1] % self.fold or x.shape[-2] % self.fold:
                raise ValueError(
                    f"RRDBNet x{self.scale} needs sides divisible by {self.fold}, got {tuple(x.shape[-2:])}"
                )
            x = F.pixel_unshuffle(x, self.fold)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos(t f), sin(t f)]`` with ``f_i = P^(-i / (dim/2))`` (guided-diffusion's convention)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeConditionedRRDB(nn.Module):
    """PGDiff's restorer: an x1 RRDBNet on ``[x_t, y, e(t)]`` (9 channels), where ``e(t)`` is a
    3-vector from a small MLP on a 100-d sinusoidal embedding, broadcast over the image.

    Keys: ``generator.*`` (the RRDBNet) and ``time_embed.{0,2}.*`` (the MLP).
    Inputs and output in [-1, 1]; ``t`` is the ORIGINAL timestep of ``x_t``.
    """

    embed_dim = 100
    time_channels = 3

    def __init__(self, channels: int = 64, num_blocks: int = 23, growth: int = 32):
        super().__init__()
        self.generator = RRDBNet(9, 3, channels, num_blocks, growth, scale=1)
        k = self.time_channels
        self.time_embed = nn.Sequential(nn.Linear(self.embed_dim, k), nn.SiLU(), nn.Linear(k, k))

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(sinusoidal_embedding(t, self.embed_dim).to(x_t.dtype))
        emb = emb[:, :, None, None].expand(-1, -1, *x_t.shape[-2:])
        return self.generator(torch.cat([x_t, y, emb], dim=1))
