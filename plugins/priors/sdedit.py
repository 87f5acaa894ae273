"""SDEdit's CelebA-HQ 256 model (``celeba_hq.ckpt``), as a diffusers ``UNet2DModel``.

SDEdit, DDNM and BIRD (SHRED's public successor) all run one checkpoint: Ho et al.'s DDPM UNet
(``ch = 128``, multipliers 1,1,2,2,4,4, two residual blocks per level, attention at 16x16) in the
``pytorch_diffusion`` layout (``temb.dense.0``, ``down.0.block.0.norm1``, ``mid.attn_1.q``...).
diffusers' ``UNet2DModel`` computes exactly this network (positional time embedding with sin
first and frequency shift 1, asymmetric-padding downsampling, one-head attention, GroupNorm eps
1e-6), so on load the keys are renamed and 1x1 attention convolutions become linear weights;
the prior is then a :class:`DiffusersPrior` (kind ``diffusers``, name ``sdedit-celebahq-256``)
with a fixed-small-variance DDPM schedule, linear betas 1e-4..0.02 over 1000 steps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from guidestack.engine.errors import PriorUnavailable

from ..checkpoints import ModelCard, module_shapes, read_state_dict, shape_problems

SDEDIT_PRESET = "sdedit-celebahq-256"
SDEDIT_DESCRIPTION = (
    "DDPM UNet on CelebA-HQ 256x256 (SDEdit's celeba_hq.ckpt, also DDNM's and BIRD's), run as "
    "a diffusers UNet2DModel; fixed variance"
)
SDEDIT_CARD = ModelCard(
    "celeba_hq.ckpt",
    "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints/celeba_hq.ckpt",
    "SDEdit code MIT; the weights are a DDPM trained on CelebA-HQ (research use only, per the "
    "CelebA licence): treat as non-commercial",
    "SDEdit, DDNM, BIRD (SHRED's successor)",
)
#: the original model's hyper-parameters (SDEdit configs/celeba.yml, ``model`` section)
SDEDIT_CONFIG: dict[str, Any] = {
    "image_size": 256,
    "ch": 128,
    "ch_mult": (1, 1, 2, 2, 4, 4),
    "num_res_blocks": 2,
    "attn_resolutions": (16,),
    "in_channels": 3,
    "out_ch": 3,
}
#: DDPMScheduler config of the model's training schedule (var_type fixedsmall)
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "variance_type": "fixed_small",
    "prediction_type": "epsilon",
    "clip_sample": True,
}


def _attention_levels(config: dict[str, Any]) -> list[bool]:
    res = config["image_size"]
    levels = []
    for _ in config["ch_mult"]:
        levels.append(res in config["attn_resolutions"])
        res //= 2
    return levels


def unet_config(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``UNet2DModel`` config that computes the original network."""
    config = SDEDIT_CONFIG if config is None else config
    attn = _attention_levels(config)
    return {
        "sample_size": config["image_size"],
        "in_channels": config["in_channels"],
        "out_channels": config["out_ch"],
        "block_out_channels": [config["ch"] * m for m in config["ch_mult"]],
        "layers_per_block": config["num_res_blocks"],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "time_embedding_type": "positional",
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "downsample_padding": 0,
        "norm_eps": 1e-6,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "attention_head_dim": None,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }


_RESNET = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2",
           "conv2": "conv2", "nin_shortcut": "conv_shortcut"}  # fmt: skip
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TOP = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
        "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}  # fmt: skip


def rename_key(key: str, levels: int) -> str:
    """The diffusers name of one original key (``down.4.attn.1.q.weight`` ->
    ``down_blocks.4.attentions.1.to_q.weight``); raises ``KeyError`` for unknown keys."""
    module, _, param = key.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{param}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)", module)
    if m:
        side, level, kind, index, leaf = m.groups()
        block = int(level) if side == "down" else levels - 1 - int(level)
        table, group = (_RESNET, "resnets") if kind == "block" else (_ATTN, "attentions")
        return f"{side}_blocks.{block}.{group}.{index}.{table[leaf]}.{param}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv", module)
    if m:
        side, level, kind = m.groups()
        block = int(level) if side == "down" else levels - 1 - int(level)
        return f"{side}_blocks.{block}.{kind}rs.0.conv.{param}"
    m = re.fullmatch(r"mid\.(block_1|block_2|attn_1)\.(\w+)", module)
    if m:
        part, leaf = m.groups()
        if part == "attn_1":
            return f"mid_block.attentions.0.{_ATTN[leaf]}.{param}"
        return f"mid_block.resnets.{int(part[-1]) - 1}.{_RESNET[leaf]}.{param}"
    raise KeyError(key)


def convert_state_dict(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Original keys -> diffusers keys; attention 1x1 conv kernels become linear weights."""
    out = {}
    for key, value in state.items():
        new = rename_key(key, levels)
        if ".attentions." in new and new.endswith("weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def _original_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the original checkpoint, derived from the config (no module needed)."""
    ch, mults, blocks = config["ch"], config["ch_mult"], config["num_res_blocks"]
    attn = _attention_levels(config)
    temb = 4 * ch
    shapes: dict[str, tuple[int, ...]] = {
        "temb.dense.0.weight": (temb, ch), "temb.dense.0.bias": (temb,),
        "temb.dense.1.weight": (temb, temb), "temb.dense.1.bias": (temb,),
        "conv_in.weight": (ch, config["in_channels"], 3, 3), "conv_in.bias": (ch,),
    }  # fmt: skip

    def resnet(prefix: str, cin: int, cout: int) -> None:
        shapes.update({
            f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
            f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
            f"{prefix}.temb_proj.weight": (cout, temb), f"{prefix}.temb_proj.bias": (cout,),
            f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
            f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,),
        })  # fmt: skip
        if cin != cout:
            shapes[f"{prefix}.nin_shortcut.weight"] = (cout, cin, 1, 1)
            shapes[f"{prefix}.nin_shortcut.bias"] = (cout,)

    def attention(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)})
        for leaf in ("q", "k", "v", "proj_out"):
            shapes[f"{prefix}.{leaf}.weight"] = (c, c, 1, 1)
            shapes[f"{prefix}.{leaf}.bias"] = (c,)

    skips, cin = [ch], ch
    for level, mult in enumerate(mults):
        for i in range(blocks):
            resnet(f"down.{level}.block.{i}", cin, ch * mult)
            cin = ch * mult
            if attn[level]:
                attention(f"down.{level}.attn.{i}", cin)
            skips.append(cin)
        if level != len(mults) - 1:
            shapes[f"down.{level}.downsample.conv.weight"] = (cin, cin, 3, 3)
            shapes[f"down.{level}.downsample.conv.bias"] = (cin,)
            skips.append(cin)
    resnet("mid.block_1", cin, cin)
    attention("mid.attn_1", cin)
    resnet("mid.block_2", cin, cin)
    for level in reversed(range(len(mults))):
        for i in range(blocks + 1):
            resnet(f"up.{level}.block.{i}", cin + skips.pop(), ch * mults[level])
            cin = ch * mults[level]
            if attn[level]:
                attention(f"up.{level}.attn.{i}", cin)
        if level:
            shapes[f"up.{level}.upsample.conv.weight"] = (cin, cin, 3, 3)
            shapes[f"up.{level}.upsample.conv.bias"] = (cin,)
    shapes.update({
        "norm_out.weight": (cin,), "norm_out.bias": (cin,),
        "conv_out.weight": (config["out_ch"], cin, 3, 3), "conv_out.bias": (config["out_ch"],),
    })  # fmt: skip
    return shapes


def sdedit_shapes(config: dict[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an original SDEdit-layout checkpoint for ``config``."""
    return _original_shapes(SDEDIT_CONFIG if config is None else config)


def build_unet(
    state: dict[str, torch.Tensor] | None = None,
    config: dict[str, Any] | None = None,
    what: str = SDEDIT_PRESET,
):
    """A diffusers ``UNet2DModel`` for ``config``, loaded from an original-layout ``state``."""
    from diffusers import UNet2DModel

    config = SDEDIT_CONFIG if config is None else config
    if state is not None:
        problems = shape_problems(
            _original_shapes(config), {k: tuple(v.shape) for k, v in state.items()}
        )
        if problems:
            raise PriorUnavailable(
                f"{what}: the file is not an SDEdit CelebA-HQ checkpoint: " + "; ".join(problems)
            )
    with torch.device("meta" if state is not None else "cpu"):
        unet = UNet2DModel(**unet_config(config))
    if state is not None:
        converted = convert_state_dict(
            {k: v.float() for k, v in state.items()}, len(config["ch_mult"])
        )
        problems = shape_problems(
            module_shapes(unet), {k: tuple(v.shape) for k, v in converted.items()}
        )
        if problems:  # a diffusers release that lays the UNet out differently
            raise PriorUnavailable(
                f"{what}: diffusers' UNet2DModel no longer fits: " + "; ".join(problems)
            )
        unet.load_state_dict(converted, strict=True, assign=True)
    return unet.eval()


def load_sdedit_prior(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    state: dict[str, torch.Tensor] | None = None,
):
    """SDEdit's ``celeba_hq.ckpt`` at ``path`` as a :class:`DiffusersPrior`."""
    from .diffusers_prior import DiffusersPrior

    path = Path(path).expanduser()
    state = read_state_dict(path) if state is None else state
    unet = build_unet(state, what=str(path))
    return DiffusersPrior(
        unet, SCHEDULER_CONFIG, name=SDEDIT_PRESET, dtype=dtype, device=device, source=str(path)
    )
