"""SwinIR (Liang et al. 2021) in the flavour DifFace trained its 512x512 face estimator with.

Key-compatible with ``swinir_restoration512_L1.pth``: the image is folded 8x8 into channels
(pixel unshuffle, ``conv_first.0``), 8 residual Swin groups of 6 blocks (window 8, 6 heads,
embedding 180, MLP ratio 2) run on the 64x64 grid, and nearest-neighbour + conv stages bring it
back to 512x512.  Images are in [0, 1] (the mean colour is subtracted inside, as trained).

The state dict holds two derived buffers per block, the relative-position index and (for shifted
blocks) the attention mask of the training grid; both are recomputed here, so the checkpoint's
copies load but grids of other sizes work too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: the training set's mean colour, subtracted before and added after the network
RGB_MEAN = (0.4488, 0.4371, 0.4040)


@dataclass(frozen=True)
class SwinIRConfig:
    img_size: int = 64
    in_chans: int = 3
    embed_dim: int = 180
    depths: tuple[int, ...] = (6,) * 8
    num_heads: tuple[int, ...] = (6,) * 8
    window_size: int = 8
    mlp_ratio: float = 2.0
    sf: int = 8
    unshuffle: bool = True
    num_feat: int = field(default=64)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * H/ws * W/ws, ws*ws, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """Index into the (2ws-1)^2 bias table for every pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(
        1
    )
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """-100 between positions that the cyclic shift brought together from different regions."""
    regions = torch.zeros(1, h, w, 1)
    label = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for vs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            regions[:, hs, vs, :] = label
            label += 1
    windows = window_partition(regions, ws).squeeze(-1)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)  # [heads, n, n]
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(bw // windows, windows, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(
        self, dim: int, resolution: int, heads: int, ws: int, shift: int, mlp_ratio: float
    ):
        super().__init__()
        if resolution <= ws:  # the whole grid is one window: nothing to shift
            ws, shift = resolution, 0
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))
        self.resolution = resolution
        mask = shifted_window_mask(resolution, resolution, ws, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def _mask(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor | None:
        if not self.shift:
            return None
        if (h, w) == (self.resolution, self.resolution) and self.attn_mask is not None:
            return self.attn_mask.to(like.dtype)
        return shifted_window_mask(h, w, self.ws, self.shift).to(like.device, like.dtype)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.ws), self._mask(h, w, x))
        y = window_merge(y, self.ws, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class _Blocks(nn.Module):
    def __init__(self, blocks: list[SwinBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class ResidualSwinGroup(nn.Module):
    """RSTB: Swin blocks, a 3x3 conv on the image-shaped features, and a skip connection."""

    def __init__(
        self, dim: int, resolution: int, depth: int, heads: int, ws: int, mlp_ratio: float
    ):
        super().__init__()
        self.residual_group = _Blocks(
            [
                SwinBlock(dim, resolution, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio)
                for i in range(depth)
            ]
        )
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, size)
        b, _, c = y.shape
        image = y.transpose(1, 2).reshape(b, c, *size)
        return self.conv(image).flatten(2).transpose(1, 2) + x


class _PatchNorm(nn.Module):
    """Holds the LayerNorm applied to the token sequence (checkpoint key ``patch_embed.norm``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class SwinIR(nn.Module):
    """SwinIR with pixel-unshuffle input and "nearest+conv" upsampling (DifFace's estimator)."""

    def __init__(self, config: SwinIRConfig = SwinIRConfig()):
        super().__init__()
        self.config = cfg = config
        if cfg.sf not in (2, 4, 8):
            raise ValueError(f"SwinIR nearest+conv upsampling supports x2, x4, x8, not x{cfg.sf}")
        dim, nf = cfg.embed_dim, cfg.num_feat
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        if cfg.unshuffle:
            self.conv_first = nn.Sequential(
                nn.PixelUnshuffle(cfg.sf), nn.Conv2d(cfg.in_chans * cfg.sf**2, dim, 3, 1, 1)
            )
        else:
            self.conv_first = nn.Conv2d(cfg.in_chans, dim, 3, 1, 1)
        self.patch_embed = _PatchNorm(dim)
        self.layers = nn.ModuleList(
            ResidualSwinGroup(dim, cfg.img_size, d, h, cfg.window_size, cfg.mlp_ratio)
            for d, h in zip(cfg.depths, cfg.num_heads, strict=True)
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, 1, 1), nn.LeakyReLU(0.01))
        self.ups = [f"conv_up{i + 1}" for i in range(cfg.sf.bit_length() - 1)]
        for name in self.ups:
            self.add_module(name, nn.Conv2d(nf, nf, 3, 1, 1))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, cfg.in_chans, 3, 1, 1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (the fold times the window)."""
        return self.config.window_size * (self.config.sf if self.config.unshuffle else 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        for layer in self.layers:
            tokens = layer(tokens, (h, w))
        return self.norm(tokens).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in [0, 1], sides multiples of :attr:`multiple`; returns the restored image
        (same size when ``unshuffle``, else ``sf`` times larger)."""
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"SwinIR needs sides divisible by {self.multiple}, got {(h, w)}")
        x = x - self.mean.to(x.dtype)
        feat = self.conv_first(x)
        feat = self.conv_after_body(self.features(feat)) + feat
        feat = self.conv_before_upsample(feat)
        for name in self.ups:
            feat = F.leaky_relu(
                getattr(self, name)(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2
            )
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        return out + self.mean.to(x.dtype)
