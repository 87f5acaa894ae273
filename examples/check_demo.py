"""What `make demo` prints after its run: how much closer to the original photo the result is than
the damaged input, and that every pixel the damage left intact was kept exactly.

    python examples/check_demo.py out/demo astronaut_masked examples/faces/astronaut.png

(The demo's input is the public-domain astronaut photo with a hole cut by guidestack's own
`degrade` code, so the original is known.)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import guidestack as gs


def psnr(a, b) -> float:
    return 10 * math.log10(4.0 / float((a - b).pow(2).mean()))


def main(folder: str, name: str, original: str) -> int:
    folder = Path(folder)
    entry = next(
        e for e in json.loads((folder / "run.json").read_text())["inputs"] if e["name"] == name
    )
    truth = gs.read_image(original).tensor
    given = gs.read_image(entry["path"]).tensor
    output = gs.read_image(folder / f"{name}.png").tensor
    facts = entry["output"]
    print(
        f"input:  {given.shape[-1]}x{given.shape[-2]} px, {psnr(given, truth):.2f} dB PSNR to the original"
    )
    print(
        f"output: {output.shape[-1]}x{output.shape[-2]} px, {psnr(output, truth):.2f} dB PSNR to the original"
    )
    if "known_max_abs_diff" in facts:
        kept = (
            "exactly"
            if facts["known_max_abs_diff"] == 0
            else f"within {facts['known_max_abs_diff']:.3g}"
        )
        print(
            f"known pixels ({100 * facts['known_fraction']:.1f}% of the photo) kept {kept}; "
            f"the prior filled the rest, upsampled by {facts['upsampler']}"
        )
    print(f"look at {folder / (name + '_compare.png')}")
    return 0 if psnr(output, truth) > psnr(given, truth) else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
