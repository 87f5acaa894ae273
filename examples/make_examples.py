"""Rebuild the example inputs in examples/faces from public-domain pictures.

Sources (public domain, read from the wheels they ship in; nothing else is used):
- ``astronaut.png``: NASA portrait of Eileen Collins, scikit-image's ``skimage/data/astronaut.png``;
- ``grace_hopper.png``: matplotlib's ``mpl-data/sample_data/grace_hopper.jpg``.

Each face is cropped by hand to the FFHQ-like framing the face priors expect (eyes a little above
the centre), resized to 128x128, then degraded with the project's own code so the examples show
what the recipes are for.  Run: ``python examples/make_examples.py SKIMAGE_DATA_DIR MPL_SAMPLE_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import kornia
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent / "faces"
SIZE = 128
CROPS = {
    "astronaut": ("astronaut.png", (125, 20, 325, 220)),
    "grace_hopper": ("grace_hopper.jpg", (120, 40, 400, 320)),
}


def _tensor(img: Image.Image) -> torch.Tensor:
    import numpy as np

    arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype="float32") / 127.5 - 1.0)
    return arr.permute(2, 0, 1)[None]


def _save(x: torch.Tensor, path: Path) -> None:
    import numpy as np

    arr = ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


def main(skimage_data: str, mpl_sample: str) -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    sources = {"astronaut.png": Path(skimage_data), "grace_hopper.jpg": Path(mpl_sample)}
    gen = torch.Generator().manual_seed(0)
    for name, (file, box) in CROPS.items():
        img = (
            Image.open(sources[file] / file)
            .convert("RGB")
            .crop(box)
            .resize((SIZE, SIZE), Image.LANCZOS)
        )
        clean = _tensor(img)
        _save(clean, HERE / f"{name}.png")
        blurred = kornia.filters.gaussian_blur2d(clean, (9, 9), (2.0, 2.0))
        noisy = blurred + 0.08 * torch.randn(clean.shape, generator=gen)
        _save(noisy, HERE / f"{name}_degraded.png")
        gray = clean.mean(dim=1, keepdim=True).expand_as(clean)
        _save(gray, HERE / f"{name}_gray.png")
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[..., SIZE // 2 : SIZE // 2 + SIZE // 4, SIZE // 4 : 3 * SIZE // 4] = 1.0
        _save(mask.expand(1, 3, SIZE, SIZE) * 2 - 1, HERE / f"{name}_mask.png")
        _save(clean * (1 - mask) + mask, HERE / f"{name}_masked.png")


if __name__ == "__main__":
    main(*sys.argv[1:3])
