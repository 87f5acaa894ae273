"""The guided-diffusion (ADM / improved-DDPM) UNet, written so official checkpoints load as-is.

Module and parameter names follow the checkpoints' state-dict keys exactly (``input_blocks.3.0.
in_layers.2.weight``...), so ``load_state_dict(strict=True)`` is the compatibility test.  One
generalisation covers the face models' forks: ``num_res_blocks`` may differ per level (DifFace /
PGDiff FFHQ-512 use ``[1, 2, 2, 2, 2, 3, 4]``) and attention is placed by feature-map
*resolution* (32, 16, 8), which is what both openai's "downsample rate" and the forks' "absolute
resolution" conventions mean once the image size is fixed.

Precision: as guided-diffusion's ``convert_to_fp16``, a half-precision torso keeps the timestep
MLP, the output head and every GroupNorm computation in float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ADMConfig:
    """Architecture hyper-parameters of one guided-diffusion UNet."""

    image_size: int
    model_channels: int
    channel_mult: tuple[float, ...]
    #: residual blocks per level (one entry per ``channel_mult`` level)
    num_res_blocks: tuple[int, ...]
    #: feature-map resolutions (in pixels) that get self-attention
    attention_resolutions: tuple[int, ...]
    in_channels: int = 3
    #: 6 = epsilon and learned-range variance values (iDDPM), 3 = epsilon only
    out_channels: int = 6
    num_heads: int = 1
    #: channels per head; overrides ``num_heads`` when not -1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    conv_resample: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.num_res_blocks) != len(self.channel_mult):
            raise ValueError(
                f"num_res_blocks has {len(self.num_res_blocks)} entries for "
                f"{len(self.channel_mult)} levels"
            )

    def with_width(self, model_channels: int, num_head_channels: int | None = None) -> ADMConfig:
        """The same topology with fewer channels (tests run the 512 models this way on a CPU)."""
        heads = self.num_head_channels if num_head_channels is None else num_head_channels
        return replace(self, model_channels=model_channels, num_head_channels=heads)

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activations' dtype (fp16 stability)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """guided-diffusion's sinusoidal embedding: ``[cos(t f), sin(t f)]``, ``f_i = P^(-i/half)``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class _Resample(nn.Module):
    """Nearest x2 upsampling or stride-2 downsampling, with a learned conv when ``use_conv``.

    The conv is stored as ``conv`` (up) or ``op`` (down), the checkpoints' names.
    """

    def __init__(self, channels: int, use_conv: bool, up: bool):
        super().__init__()
        self.up = up
        if up:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None
        elif use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return x if self.conv is None else self.conv(x)
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding (FiLM scale-shift or additive)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        scale_shift: bool,
        dropout: float = 0.0,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if self.updown:
            self.h_upd = _Resample(channels, False, up=up)
            self.x_upd = _Resample(channels, False, up=up)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions (1x1 ``Conv1d`` projections, as stored).

    ``legacy_order=True`` (every public face model) lays the fused projection out head by head,
    ``[q_h, k_h, v_h]``; the "new order" lays it out ``[q, k, v]`` then splits heads.
    """

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, legacy_order: bool):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(
                    f"{channels} channels do not split into heads of {num_head_channels}"
                )
            num_heads = channels // num_head_channels
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))  # [b, 3c, n]
        heads, n = self.num_heads, flat.shape[-1]
        ch = c // heads
        if self.legacy_order:
            q, k, v = qkv.reshape(b, heads, 3 * ch, n).split(ch, dim=2)
        else:
            q, k, v = (part.reshape(b, heads, ch, n) for part in qkv.chunk(3, dim=1))
        # [b, heads, n, ch]; softmax(q k^T / sqrt(ch)) v as guided-diffusion computes it
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        out = out.transpose(-1, -2).reshape(b, c, n)
        return (flat + self.proj_out(out)).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """A sequence whose residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (unconditional), from an :class:`ADMConfig`.

    ``forward(x, t)`` takes images ``[N, C, H, W]`` and ORIGINAL timesteps ``[N]`` and returns
    ``[N, out_channels, H, W]``.
    """

    def __init__(self, config: ADMConfig):
        super().__init__()
        self.config = cfg = config
        mc = cfg.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def res(ch_in: int, ch_out: int | None = None, **kw) -> ResBlock:
            return ResBlock(
                ch_in,
                emb_dim,
                ch_out,
                scale_shift=cfg.use_scale_shift_norm,
                dropout=cfg.dropout,
                **kw,
            )

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, cfg.num_head_channels, not cfg.use_new_attention_order)

        ch = int(cfg.channel_mult[0] * mc)
        first = ch
        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        )
        skips = [ch]
        resolution = cfg.image_size
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks[level]):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if resolution in cfg.attention_resolutions:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
            if level != last:
                down = (
                    res(ch, ch, down=True)
                    if cfg.resblock_updown
                    else _Resample(ch, cfg.conv_resample, up=False)
                )
                self.input_blocks.append(TimestepSequential(down))
                skips.append(ch)
                resolution //= 2
        self.middle_block = TimestepSequential(res(ch), attn(ch, cfg.num_heads), res(ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [res(ch + skips.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if resolution in cfg.attention_resolutions:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks[level]:
                    up = (
                        res(ch, ch, up=True)
                        if cfg.resblock_updown
                        else _Resample(ch, cfg.conv_resample, up=True)
                    )
                    layers.append(up)
                    resolution *= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.Conv2d(first, cfg.out_channels, 3, padding=1)
        )

    @property
    def torso_dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def convert_torso(self, dtype: torch.dtype) -> ADMUNet:
        """Cast the convolutions of the down, middle and up paths to ``dtype`` (guided-diffusion's
        ``convert_to_fp16``); norms, the timestep MLP and the output head stay as they are."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in part.modules():
                if isinstance(module, nn.Conv1d | nn.Conv2d):
                    module.to(dtype)
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(
            timestep_embedding(t, self.config.model_channels).to(self.out[2].weight.dtype)
        )
        h = x.to(self.torso_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(self.out[2].weight.dtype)).to(x.dtype)
