"""The ``spandrel`` restorer: any restoration network spandrel recognises, from its weights file.

``restorer = { use = "spandrel", path = "model.pth" }`` (or ``.safetensors``) detects the
architecture (SwinIR, ESRGAN/Real-ESRGAN, SCUNet, DAT, HAT, NAFNet, GFPGAN, RestoreFormer...;
CodeFormer and Restormer with ``guidestack[codeformer]``); ``model = "gfpgan-1.4"`` names a file
of :mod:`.catalogue` instead, found in (or downloaded, checksum-verified, to) the models folder.

How a network is run on ``y`` (the prior's size, in [-1, 1]):

- face networks (GFPGAN, CodeFormer, RestoreFormer) take the aligned face: the input (a face the
  faces pipeline aligned to the FFHQ template, or a prior's own aligned crop) is resized to the
  512x512 crop they were trained on (``size``) and the result back;
- other networks run at their own scale on the input shrunk by ``downsample`` (default: half the
  network's scale, measured best for Real-ESRGAN x4; 1 for x1 restorers), or resized to ``size``;
  the output is resized to the input's size.  Inputs larger than ``tile`` pixels go through the
  network in overlapping tiles (:mod:`.tiling`) unless the network does its own;
- the network runs on the input's device, in its dtype (``dtype = "auto"``) or the one given, one
  sample at a time (a batch equals single runs bit for bit).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from guidestack.engine.errors import InputError
from guidestack.engine.restorer import Restorer

from ..weights import fetch
from .catalogue import PRESETS
from .options import SpandrelOptions
from .spandrel_loader import EXTRA_HINT, extra_installed, load_file
from .tiling import run_tiled

FACE_SIZE = 512
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def _face_call(model, fidelity: float):
    """How a face network maps a [0, 1] crop to a [0, 1] crop.  GFPGAN and CodeFormer work in
    [-1, 1] (spandrel's generic call passes [0, 1]); GFPGAN uses its stored noise maps so runs
    are deterministic (the official script draws fresh noise)."""
    arch = model.architecture.id
    net = model.model
    if arch == "GFPGAN":
        return lambda x: (net(x * 2 - 1, return_rgb=False, randomize_noise=False)[0] + 1) / 2
    if arch == "CodeFormer":
        return lambda x: (net(x * 2 - 1, weight=fidelity)[0] + 1) / 2
    return model


def _dtype(model, option: str, like: torch.Tensor, who: str) -> torch.dtype:
    wanted = like.dtype if option == "auto" else DTYPES[option]
    if wanted not in DTYPES.values():
        wanted = torch.float32
    ok = {torch.float32: True, torch.float16: model.supports_half}
    ok[torch.bfloat16] = model.supports_bfloat16
    if ok[wanted]:
        return wanted
    if option == "auto":
        return torch.float32
    raise InputError(
        f"{who}: {model.architecture.name} does not run in {option} "
        f"(fp16: {model.supports_half}, bf16: {model.supports_bfloat16}); use dtype = 'float32'"
    )


def run_network(
    model,
    y: torch.Tensor,
    *,
    who: str,
    size: int | None = None,
    downsample: float | None = None,
    tile: int = 512,
    tile_overlap: int = 32,
    dtype: str = "auto",
    fidelity: float = 0.5,
) -> torch.Tensor:
    """``model`` (a spandrel descriptor) applied to ``y`` ([N, C, H, W] in [-1, 1]); the result
    has ``y``'s shape, device and dtype."""
    h, w = y.shape[-2:]
    face = model.purpose == "FaceSR"
    if face and size is None:
        size = FACE_SIZE
    if face and h != w:
        raise InputError(
            f"{who}: {model.architecture.name} restores aligned square face crops, got {h}x{w} "
            "(use --faces on a photo, or aligned faces)"
        )
    if size is not None:
        work = (size, size)
    else:
        factor = downsample if downsample is not None else max(1.0, model.scale / 2)
        work = (max(1, round(h / factor)), max(1, round(w / factor)))
    channels = y.shape[1]
    if channels != model.input_channels and not (channels == 1 and model.input_channels == 3):
        raise InputError(
            f"{who}: {model.architecture.name} takes {model.input_channels}-channel images, "
            f"got {channels} channels"
        )
    run_dtype = _dtype(model, dtype, y, who)
    model.to(device=y.device, dtype=run_dtype)
    call = _face_call(model, fidelity) if face else model
    tiles = not face and tile > 0 and model.tiling.name != "INTERNAL"
    outs = []
    for i in range(y.shape[0]):
        x = (y[i : i + 1].float() + 1) / 2
        if channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = _resize(x, work).clamp(0, 1).to(run_dtype).contiguous()
        with torch.inference_mode():
            out = run_tiled(call, x, model.scale, tile, tile_overlap) if tiles else call(x)
        out = _resize(out.float().clone(), (h, w)).clamp(0, 1)
        if channels == 1 and out.shape[1] == 3:
            out = out.mean(dim=1, keepdim=True)
        outs.append(out)
    return (torch.cat(outs) * 2 - 1).to(y.dtype)


def preset_path(name: str, who: str) -> str:
    """The file of catalogue entry ``name``: cached, downloaded, or an error saying how to get it."""
    preset = PRESETS[name]
    if preset.extra and not extra_installed():
        raise InputError(
            f"{who}: {name} is a {preset.architecture} network, which needs {EXTRA_HINT}. "
            f"Licence of the weights: {preset.card.licence}."
        )
    hint = 'set path = "/path/to/' + preset.card.filename + '" in the restorer table'
    return str(fetch(preset.card, f'{who} (model = "{name}")', hint))


class SpandrelRestorer(Restorer):
    name = "spandrel"
    description = (
        "Any restoration network spandrel recognises (SwinIR, Real-ESRGAN, SCUNet, HAT, DAT, "
        "NAFNet, GFPGAN, RestoreFormer...; CodeFormer with guidestack[codeformer]) from its "
        "weights file; face networks take the aligned face"
    )
    Options = SpandrelOptions

    def __init__(self, options: SpandrelOptions | None = None):
        super().__init__(options)
        self._model: Any = None

    @property
    def network(self):
        """The loaded spandrel descriptor (loaded on first use)."""
        if self._model is None:
            o = self.options
            who = f"restorer '{self.name}'"
            path = o.path if o.path is not None else preset_path(o.model, who)
            self._model = load_file(path)
        return self._model

    def settings(self) -> dict[str, Any]:
        o = self.options
        preset = PRESETS[o.model].defaults if o.model is not None else {}
        out = {k: getattr(o, k) for k in ("size", "downsample", "tile", "tile_overlap")}
        out.update({k: v for k, v in preset.items() if out.get(k) is None})
        return {**out, "dtype": o.dtype, "fidelity": o.fidelity}

    def restore(self, y, x_t=None, t=None):
        return run_network(self.network, y, who=f"restorer '{self.name}'", **self.settings())
