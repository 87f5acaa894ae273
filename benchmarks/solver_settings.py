"""Why the solver recipes carry ``[per_prior.gaussian]`` settings: each setting against the
paper's value on the two public-domain example faces, on the Gaussian prior (docs/solvers.md).

For each recipe and setting it prints the measurement consistency ``||H(x) - y|| / ||y||`` of
the output, per face (for SR also as PSNR of ``H(x)`` against the 16x16 ``y``) and, for ``old-photo-ddnm``, how far the output's channel standard deviations fall
short of the colour-statistics targets::

    python benchmarks/solver_settings.py            # 4-5 minutes of CPU
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import guidestack as gs

FACES = Path(__file__).resolve().parents[1] / "examples" / "faces"
NAMES = ("astronaut", "grace_hopper")
#: PGDiff's CelebA-HQ channel standard deviations in [-1, 1] (the colour-statistics default)
TARGET_STD = torch.tensor([0.53549316, 0.47539538, 0.46814889])

#: (recipe, overrides to compare: the paper's first, the recipe's Gaussian setting last)
CASES = (
    ("dps-inpaint", ({"guidance.scale": 0.5}, {"guidance.scale": 3.0})),
    ("dps-sr4", ({"guidance.scale": 0.3}, {"guidance.scale": 3.0}, {"guidance.scale": 6.0})),
    ("ddnm-sr4", ({"sampler.clip_x0": False}, {"sampler.clip_x0": True})),
    (
        "shred-sr4",
        (
            {"stage.shred.iterations": 150, "stage.shred.lr": 0.05},
            {"stage.shred.iterations": 400, "stage.shred.lr": 0.07},
        ),
    ),
    ("old-photo-ddnm", ({"guidance.scale": 0.01}, {"guidance.scale": 0.5})),
)


def low_resolution(name: str) -> Image.Image:
    """The face at 16x16 (box filter: the mean of each block, what ``downsample`` measures)."""
    return Image.open(FACES / f"{name}.png").convert("RGB").resize((16, 16), Image.BOX)


def inputs(recipe: str, name: str) -> dict:
    if recipe.endswith("sr4"):
        return {"image": low_resolution(name)}
    if recipe == "old-photo-ddnm":
        return {"image": FACES / f"{name}_old.png", "mask": FACES / f"{name}_old_mask.png"}
    return {"image": FACES / f"{name}_masked.png", "mask": FACES / f"{name}_mask.png"}


def measure(prior, recipe: str, overrides: dict, seed: int) -> list[str]:
    cells = []
    for name in NAMES:
        given = inputs(recipe, name)
        run = gs.load_recipe(recipe, set=overrides)
        image = given.pop("image")
        out = gs.run(run, prior, image, seed=seed, output_size="prior", **given)
        if recipe.endswith("sr4"):  # H = 4x area downsampling, y the 16x16 face
            y = torch.from_numpy(np.asarray(image, dtype=np.float64)) / 127.5 - 1
            y = y.permute(2, 0, 1)
            mse = float((F.avg_pool2d(out.restored.double(), 4) - y).pow(2).mean())
            relative = math.sqrt(mse / float(y.pow(2).mean()))
            cell = f"{100 * relative:.2f} % ({10 * math.log10(4.0 / mse):.1f} dB)"
        else:
            stage = "ddnm" if "ddnm" in recipe else "dps"
            (relative,) = out.entry["stages"][stage]["consistency"]
            cell = f"{100 * relative:.2f} %"
        if recipe == "old-photo-ddnm":
            std = out.restored.double().flatten(1).std(dim=1)
            short = (1 - std / TARGET_STD).tolist()
            cell += ", std short by " + "/".join(f"{100 * s:.0f}" for s in short) + " %"
        cells.append(cell)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prior = gs.load_prior("gaussian-faces-64")
    print("| recipe | setting | " + " | ".join(NAMES) + " |")
    print("|---|---|" + "---|" * len(NAMES))
    for recipe, settings in CASES:
        for overrides in settings:
            cells = measure(prior, recipe, overrides, args.seed)
            setting = ", ".join(f"`{k} = {str(v).lower()}`" for k, v in overrides.items())
            print(f"| {recipe} | {setting} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
