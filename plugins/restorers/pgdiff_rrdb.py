"""PGDiff's time-conditioned restorer ``f(x_t, y, t)``: spandrel's RRDBNet plus a timestep MLP.

The checkpoint (``rrdb_iter_100000.pth``, mmediting) holds an x1 RRDBNet under ``generator.``
(23 blocks, 64 channels; its first conv sees ``[x_t, y, e(t)]`` folded 4x4 into 144 channels) and
the MLP ``time_embed.{0,2}`` that turns a 100-d sinusoidal embedding of the ORIGINAL timestep into
the 3-vector ``e(t)`` broadcast over the image.  spandrel recognises the RRDBNet (its ESRGAN
architecture: keys and detection are BasicSR's) but not the conditioning around it, so only that
stays here: the generator is loaded and run by spandrel, on the pixel-unshuffled input (spandrel
sees 144 input channels and an x4 trunk; unshuffling by 4 first makes the whole an x1 network, as
in the official code).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from guidestack.engine.errors import InputError

from .spandrel_loader import load_descriptor

EMBED_DIM = 100
TIME_CHANNELS = 3
FOLD = 4


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos(t f), sin(t f)]`` with ``f_i = P^(-i / (dim/2))`` (guided-diffusion's convention)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeConditionedRRDB(nn.Module):
    """``generator(unshuffle([x_t, y, e(t)]))``; inputs and output in [-1, 1]."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator
        k = TIME_CHANNELS
        self.time_embed = nn.Sequential(nn.Linear(EMBED_DIM, k), nn.SiLU(), nn.Linear(k, k))

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, w = x_t.shape[-2:]
        if h % FOLD or w % FOLD:
            raise ValueError(f"PGDiff's restorer needs sides divisible by {FOLD}, got {(h, w)}")
        emb = self.time_embed(sinusoidal_embedding(t, EMBED_DIM).to(x_t.dtype))
        emb = emb[:, :, None, None].expand(-1, -1, h, w)
        return self.generator(F.pixel_unshuffle(torch.cat([x_t, y, emb], dim=1), FOLD))


def _part(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def time_conditioned_rrdb(state: Mapping[str, torch.Tensor], source: Path) -> TimeConditionedRRDB:
    """The restorer from PGDiff's (unwrapped) state dict; keys other than ``generator.*`` and
    ``time_embed.*`` (a discriminator, optimiser state) are ignored, as PGDiff's own
    ``strict=False`` does."""
    generator = _part(state, "generator.")
    embed = _part(state, "time_embed.")
    if not generator or not embed:
        raise InputError(
            f"pgdiff-rrdb: {source} has no generator.* and time_embed.* keys: not PGDiff's "
            "time-conditioned restorer (rrdb_iter_100000.pth)"
        )
    model = load_descriptor(generator, source)
    expected = 3 * FOLD**2 + 3 * FOLD**2 + TIME_CHANNELS * FOLD**2
    channels = model.input_channels
    if model.architecture.id != "ESRGAN" or model.scale != FOLD or channels != expected:
        raise InputError(
            f"pgdiff-rrdb: the generator in {source} is a {model.architecture.name} x{model.scale} "
            f"with {channels} input channels, not PGDiff's RRDBNet ({expected} channels, x{FOLD} "
            "trunk on a 4x4 fold)"
        )
    net = TimeConditionedRRDB(model.model)
    try:
        net.time_embed.load_state_dict(embed)
    except RuntimeError as exc:
        raise InputError(f"pgdiff-rrdb: time_embed in {source} does not fit: {exc}") from exc
    return net.eval().requires_grad_(False)
