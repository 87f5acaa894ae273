"""The built-in upsamplers: interpolation, and Real-ESRGAN x4 when the realesrgan extra is in.

``auto`` (the default of ``[output] upsampler``) is resolved by the public API: Real-ESRGAN x4
where it can run, bicubic interpolation otherwise.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from guidestack.engine.errors import InputError
from guidestack.engine.upsampler import Upsampler, resize


class Interpolation(Upsampler):
    """Plain interpolation (antialiased when shrinking)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.name = mode  # type: ignore[misc]
        self.description = f"{mode} interpolation"  # type: ignore[misc]

    def __call__(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize(images, size, self.mode)


class RealESRGANx4(Upsampler):
    """Real-ESRGAN x4plus (GAN-trained: sharp detail rather than PSNR): one pass of the network
    (x4), then the result is resized to the size exactly.  One pass only: a second one works
    on 16 times the pixels (a 64 px face to 1024 px would cost ~30 s on a CPU instead of ~1 s)
    and adds texture the prior never restored."""

    name = "realesrgan-x4"
    description = (
        "Real-ESRGAN x4plus super-resolution (weights from the realesrgan extra, offline); "
        "sharper than interpolation"
    )

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def unavailable(self) -> str | None:
        from .restorers.realesrgan import ncnn_files

        try:
            ncnn_files()
        except InputError as exc:
            return str(exc)
        return None

    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                from .restorers.realesrgan import load_realesrgan

                self._model = load_realesrgan()
            return self._model

    def __call__(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        from .restorers.tiling import run_tiled

        h, w = images.shape[-2:]
        if size[0] <= h and size[1] <= w:
            return resize(images, size)
        model = self.model()
        model.to(device=images.device, dtype=torch.float32)
        outs = []
        for image in images:
            x = ((image[None].float() + 1) / 2).clamp(0, 1)
            with torch.inference_mode():
                x = run_tiled(model, x, 4, 512, 32).clamp(0, 1)
            outs.append(resize(x * 2 - 1, size).to(images.dtype))
        return torch.cat(outs)


#: the built-in upsamplers, one instance each (module-level, so the registry can name them by
#: import path and import this module only when one is used)
BICUBIC = Interpolation("bicubic")
BILINEAR = Interpolation("bilinear")
NEAREST = Interpolation("nearest")
REALESRGAN_X4 = RealESRGANx4()


def builtin_upsamplers() -> list[Upsampler]:
    return [BICUBIC, BILINEAR, NEAREST, REALESRGAN_X4]
