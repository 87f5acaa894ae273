"""Rebuild the example inputs in examples/faces from public-domain pictures.

Sources (public domain, read from the wheels they ship in; nothing else is used):
- ``astronaut.png``: NASA portrait of Eileen Collins, scikit-image's ``skimage/data/astronaut.png``;
- ``grace_hopper.png``: matplotlib's ``mpl-data/sample_data/grace_hopper.jpg``.

Each face is cropped by hand to the FFHQ-like framing the face priors expect (eyes a little above
the centre), resized to 128x128, then degraded with the project's own code so the examples show
what the recipes are for.  Run: ``python examples/make_examples.py SKIMAGE_DATA_DIR MPL_SAMPLE_DIR``
(``python examples/make_examples.py --low-resolution`` rebuilds only the 16x16 example from the
saved ``astronaut.png``).
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
        old, scratches = _old_photo(clean, torch.Generator().manual_seed(len(name)))
        _save(old, HERE / f"{name}_old.png")
        _save(scratches.expand(1, 3, SIZE, SIZE) * 2 - 1, HERE / f"{name}_old_mask.png")
    low_resolution()


def low_resolution() -> None:
    """``astronaut_lr16.png``: the clean 128x128 face averaged over 8x8 blocks to 16x16 (the
    super-resolution recipes' example: 4x to a 64x64 prior).  Reads the saved example only."""
    clean = _tensor(Image.open(HERE / "astronaut.png"))
    low = torch.nn.functional.avg_pool2d(clean, SIZE // 16)
    _save(low, HERE / "astronaut_lr16.png")


def _old_photo(clean: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A faded, blurred, grainy grayscale print with white scratches; returns (photo, scratch mask)."""
    gray = clean.mean(dim=1, keepdim=True)
    soft = kornia.filters.gaussian_blur2d(gray, (5, 5), (1.0, 1.0))
    faded = 0.75 * soft + 0.1 + 0.05 * torch.randn(soft.shape, generator=gen)
    sepia = torch.cat([faded + 0.08, faded, faded - 0.08], dim=1)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    for _ in range(3):  # thin, slightly slanted scratches
        x0 = int(torch.randint(10, SIZE - 10, (1,), generator=gen))
        slope = float(torch.empty(1).uniform_(-0.3, 0.3, generator=gen))
        for y in range(SIZE):
            x = int(round(x0 + slope * (y - SIZE / 2)))
            if 0 <= x < SIZE - 1:
                mask[..., y, x : x + 2] = 1.0
    return sepia * (1 - mask) + mask, mask


if __name__ == "__main__":
    if sys.argv[1:] == ["--low-resolution"]:
        low_resolution()
    else:
        main(*sys.argv[1:3])
