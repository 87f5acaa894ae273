"""The ``adm`` prior backend: guided-diffusion (ADM / improved-DDPM) checkpoints by preset.

The papers' face models are plain state dicts with no architecture inside, so a checkpoint is
always paired with a named preset (or the preset is recognised from the file's key shapes):

=====================  ====================================================  ================
preset                 checkpoint (used by)                                   variance
=====================  ====================================================  ================
``iddpm-ffhq-512``     ``iddpm_ffhq512_ema500000.pth`` (DifFace, PGDiff)       learned range
``iddpm-ffhq-256``     ``iddpm_ffhq256_ema750000.pth`` (DifFace inpainting)    learned range
``dps-ffhq-256``       ``ffhq_10m.pt`` (DPS)                                   learned range
``sdedit-celebahq-256`` ``celeba_hq.ckpt`` (SDEdit, DDNM, BIRD; see sdedit.py)  fixed (small)
=====================  ====================================================  ================

All use DDPM's linear schedule (betas 1e-4..0.02, T = 1000) and take ORIGINAL timesteps.

How a user points at one (docs/models.md):

- ``--prior iddpm-ffhq-512``: the named prior, read from ``$GUIDESTACK_MODELS`` (default
  ``~/.cache/guidestack/models``) under the official file name;
- ``--prior adm:iddpm-ffhq-512:/path/to/file.pth``: an explicit file and preset;
- ``--prior adm:/path/to/file.pth``: the preset is recognised from the file's keys and shapes.

The same strings go in a recipe's ``[prior] name``; ``[prior] dtype = "float16"`` runs the UNet
torso in half precision as guided-diffusion's ``use_fp16`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from guidestack.engine.errors import PriorUnavailable, UsageError
from guidestack.engine.prior import Prior, PriorOutput, linear_alphas_cumprod

from ..checkpoints import (
    ModelCard,
    load_exact,
    matches,
    missing_file_message,
    models_dir,
    module_shapes,
    peek_shapes,
    read_state_dict,
)
from .adm_unet import ADMConfig, ADMUNet
from .sdedit import (
    SDEDIT_CARD,
    SDEDIT_DESCRIPTION,
    SDEDIT_PRESET,
    load_sdedit_prior,
    sdedit_shapes,
)

SCHEME = "adm"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: file suffixes a bare checkpoint path may have for the backend to look inside it
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


@dataclass(frozen=True)
class ADMPreset:
    name: str
    description: str
    config: ADMConfig
    card: ModelCard


ADM_PRESETS: dict[str, ADMPreset] = {
    p.name: p
    for p in (
        ADMPreset(
            "iddpm-ffhq-512",
            "improved-DDPM UNet on FFHQ 512x512 (DifFace's prior, also PGDiff's); learned variance",
            ADMConfig(
                image_size=512,
                model_channels=32,
                channel_mult=(1, 2, 4, 8, 8, 16, 16),
                num_res_blocks=(1, 2, 2, 2, 2, 3, 4),
                attention_resolutions=(32, 16, 8),
                num_head_channels=64,
            ),
            ModelCard(
                "iddpm_ffhq512_ema500000.pth",
                "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/iddpm_ffhq512_ema500000.pth",
                "S-Lab License 1.0 (non-commercial use only); trained on FFHQ (CC BY-NC-SA 4.0)",
                "DifFace (restoration), PGDiff (all tasks)",
            ),
        ),
        ADMPreset(
            "iddpm-ffhq-256",
            "improved-DDPM UNet on FFHQ 256x256 (DifFace's inpainting prior); learned variance",
            ADMConfig(
                image_size=256,
                model_channels=128,
                channel_mult=(1, 1, 2, 2, 4, 4),
                num_res_blocks=(2,) * 6,
                attention_resolutions=(16, 8),
                num_head_channels=64,
            ),
            ModelCard(
                "iddpm_ffhq256_ema750000.pth",
                "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/iddpm_ffhq256_ema750000.pth",
                "S-Lab License 1.0 (non-commercial use only); trained on FFHQ (CC BY-NC-SA 4.0)",
                "DifFace (inpainting)",
            ),
        ),
        ADMPreset(
            "dps-ffhq-256",
            "guided-diffusion UNet on FFHQ 256x256 (DPS's prior); learned variance",
            ADMConfig(
                image_size=256,
                model_channels=128,
                channel_mult=(1, 1, 2, 2, 4, 4),
                num_res_blocks=(1,) * 6,
                attention_resolutions=(16,),
                num_heads=4,
                num_head_channels=64,
                resblock_updown=True,
            ),
            ModelCard(
                "ffhq_10m.pt",
                "https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh",
                "no licence stated by DPS (research code); trained on FFHQ (CC BY-NC-SA 4.0): "
                "treat as non-commercial",
                "DPS (diffusion posterior sampling)",
                "pip install gdown && gdown --folder "
                "https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh -O /tmp/dps "
                "&& mv /tmp/dps/ffhq_10m.pt {dest}",
            ),
        ),
    )
}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise UsageError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")


class ADMPrior(Prior):
    """A guided-diffusion UNet as a :class:`Prior`.

    With 6 output channels the second half is iDDPM's learned-range variance value ``v`` (in
    [-1, 1] at convergence) and becomes ``PriorOutput.variance_values``; the sampler's
    ``variance = "auto"`` then steps with ``log var = f log beta + (1 - f) log beta_tilde``,
    ``f = (v + 1) / 2``, and PGDiff's mean shift scales its gradient by that variance.
    ``dtype`` is the torso's compute dtype (float16 as guided-diffusion's ``use_fp16``).
    Parameters are frozen; gradients still flow to ``x_t`` for guidance.
    """

    kind = "adm"

    def __init__(
        self,
        unet: ADMUNet,
        *,
        name: str = "adm",
        source: str | None = None,
        dtype: str | torch.dtype = "float32",
        alphas_cumprod: torch.Tensor | None = None,
    ):
        super().__init__()
        cfg = unet.config
        if cfg.out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
            raise PriorUnavailable(
                f"{name}: {cfg.out_channels} output channels for {cfg.in_channels} input channels"
            )
        self.unet = unet.eval().requires_grad_(False)
        compute = _dtype(dtype)
        if compute != torch.float32:
            self.unet.convert_torso(compute)
        self.image_size = cfg.image_size
        self.channels = cfg.in_channels
        self.learned_variance = cfg.out_channels == 2 * cfg.in_channels
        self.name = name
        self.source = source if source is not None else name
        abar = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self.register_buffer("alphas_cumprod", abar.detach().to("cpu", torch.float64))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> PriorOutput:
        n = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1).expand(n)
        out = self.unet(x_t, t)
        if not self.learned_variance:
            return PriorOutput(eps=out)
        eps, values = out.split(self.channels, dim=1)
        return PriorOutput(eps=eps, variance_values=values)

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            source=self.source,
            dtype=str(self.unet.torso_dtype).removeprefix("torch."),
            architecture=self.unet.config.to_dict(),
        )
        return info


# ------------------------------------------------------------------------------------ loading


def build_unet(
    config: ADMConfig, state: dict[str, torch.Tensor] | None = None, what: str = "ADM UNet"
) -> ADMUNet:
    """An :class:`ADMUNet`; with ``state`` it is built on the meta device and the checkpoint's
    tensors are assigned (no random init of 160 M parameters, no second copy in memory)."""
    if state is None:
        return ADMUNet(config)
    with torch.device("meta"):
        unet = ADMUNet(config)
    load_exact(unet, state, what)
    return unet


@functools.lru_cache(maxsize=16)
def preset_shapes(config: ADMConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an :class:`ADMUNet` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return module_shapes(ADMUNet(config))


def detect_preset(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The preset (ADM or SDEdit) whose state-dict keys and shapes ``shapes`` are, if any."""
    for name, preset in ADM_PRESETS.items():
        if matches(preset_shapes(preset.config), shapes):
            return name
    if matches(sdedit_shapes(), shapes):
        return SDEDIT_PRESET
    return None


def all_preset_names() -> list[str]:
    return [*ADM_PRESETS, SDEDIT_PRESET]


def load_adm_prior(
    path: str | Path,
    preset: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
) -> Prior:
    """Load the checkpoint at ``path`` with ``preset`` (recognised from its shapes if ``None``)."""
    _dtype(dtype)  # a bad dtype fails before reading hundreds of megabytes
    path = Path(path).expanduser()
    if preset is not None and preset not in all_preset_names():
        raise PriorUnavailable(
            f"unknown ADM preset '{preset}'; known presets: {', '.join(all_preset_names())}"
        )
    if preset == SDEDIT_PRESET:
        return load_sdedit_prior(path, device=device, dtype=dtype)
    state = read_state_dict(path)
    if preset is None:
        preset = detect_preset({k: tuple(v.shape) for k, v in state.items()})
        if preset is None:
            raise PriorUnavailable(
                f"{path} does not match any known ADM preset ({', '.join(all_preset_names())}); "
                f"name one explicitly (adm:<preset>:{path}) to see what differs"
            )
        if preset == SDEDIT_PRESET:
            return load_sdedit_prior(path, device=device, dtype=dtype, state=state)
    spec = ADM_PRESETS[preset]
    unet = build_unet(spec.config, state, f"{path} as preset '{preset}'")
    prior = ADMPrior(unet, name=preset, source=str(path), dtype=dtype)
    if device is not None:
        prior.to(device)
    return prior


def parse_ref(ref: str) -> tuple[str | None, str]:
    """``"[adm:][<preset>:]<path>"`` -> ``(preset or None, path)``."""
    rest = ref.removeprefix(f"{SCHEME}:")
    head, sep, tail = rest.partition(":")
    if sep and head in all_preset_names():
        return head, tail
    return None, rest


def default_checkpoint(preset: str) -> Path:
    card = SDEDIT_CARD if preset == SDEDIT_PRESET else ADM_PRESETS[preset].card
    return models_dir() / card.filename


def load_named(preset: str, device: str | torch.device = "cpu", dtype: str = "float32") -> Prior:
    """The named prior ``preset``, read from ``$GUIDESTACK_MODELS`` under its official file name."""
    path = default_checkpoint(preset)
    if not path.is_file():
        card = SDEDIT_CARD if preset == SDEDIT_PRESET else ADM_PRESETS[preset].card
        raise PriorUnavailable(
            missing_file_message(
                f"The prior '{preset}'",
                card,
                f"Or point at a file anywhere with --prior adm:{preset}:/path/to/{card.filename}. "
                "To run without any download, use the built-in offline prior gaussian-faces-64.",
            )
        )
    return load_adm_prior(path, preset, device=device, dtype=dtype)


def _named_factory(preset: str) -> Callable[..., Prior]:
    """``factory(device=, dtype=)`` of the named prior ``preset`` (a partial of
    :func:`load_named`, so the built-in plugin's index can name it by import path)."""
    return functools.partial(load_named, preset)


def claims(ref: str) -> bool:
    """``adm:...`` references, and bare checkpoint paths whose keys fit a preset."""
    if ref.startswith(f"{SCHEME}:"):
        return True
    path = Path(ref).expanduser()
    if path.suffix not in CHECKPOINT_SUFFIXES or not path.is_file():
        return False
    shapes = peek_shapes(path)
    return shapes is not None and detect_preset(shapes) is not None


def load(ref: str, device: str | torch.device = "cpu", dtype: str = "float32") -> Prior:
    preset, path = parse_ref(ref)
    if not path:
        raise PriorUnavailable(f"'{ref}' names no checkpoint file; write adm:<preset>:<path>")
    return load_adm_prior(path, preset, device=device, dtype=dtype)


def contribute(registry) -> None:
    """Register the ``adm`` backend and one named prior per preset."""
    for name, preset in ADM_PRESETS.items():
        registry.add_prior(
            name,
            _named_factory(name),
            f"{preset.description}; weights {preset.card.filename} in $GUIDESTACK_MODELS, "
            "non-commercial (docs/models.md)",
        )
    registry.add_prior(
        SDEDIT_PRESET,
        _named_factory(SDEDIT_PRESET),
        f"{SDEDIT_DESCRIPTION}; weights {SDEDIT_CARD.filename} in $GUIDESTACK_MODELS, "
        "non-commercial (docs/models.md)",
    )
    registry.add_prior_backend(
        SCHEME,
        claims,
        load,
        "guided-diffusion / improved-DDPM checkpoints: adm:<preset>:<file> or adm:<file> "
        f"(presets {', '.join(all_preset_names())}; docs/models.md)",
    )
