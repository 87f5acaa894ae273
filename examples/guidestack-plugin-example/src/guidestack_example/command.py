"""``guidestack mirror-score IMAGE...``: how left-right symmetric faces are.

A command contributed by a plugin (``registry.add_command`` in :mod:`.plugin`).  It scores each
image with the same measure the ``mirror-symmetry`` stage guides with, normalised so that images
of any size compare: the weighted mean squared difference between the (blurred) image and its
mirror image, with pixels in [-1, 1].  0 means exactly symmetric (inside the face box); the
largest possible value is 4.  Useful to check what the stage did: score the input and the output.
"""

from __future__ import annotations

import argparse
import json

from guidestack.engine.registry import Registry

DESCRIPTION = "score how left-right symmetric faces are (0 = symmetric), as mirror-symmetry sees it"


def configure(parser: argparse.ArgumentParser) -> None:
    """The command's arguments; imports nothing heavy (the CLI calls it for every command)."""
    parser.add_argument("images", nargs="+", help="image files (aligned faces)")
    parser.add_argument(
        "--sigma", type=float, default=0.0, help="blur in pixels before comparing (default: 0)"
    )
    parser.add_argument(
        "--extent",
        type=float,
        default=0.8,
        help="side of the centred face box compared, as a fraction of the image (default: 0.8)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list")


def mirror_score(image, sigma: float = 0.0, extent: float = 0.8):
    """Per-sample normalised asymmetry of ``image`` ``[N, C, H, W]``: the stage's loss divided
    by half the sum of its weights (``C * sum(W^2)``), so a constant difference ``d`` scores
    ``d^2``."""
    from .symmetry import asymmetry, face_window

    channels, height, width = image.shape[1:]
    weights = face_window(height, width, extent, image)
    return asymmetry(image, sigma, extent) / (0.5 * channels * weights.square().sum())


def run(args: argparse.Namespace, registry: Registry) -> int:
    from guidestack.engine.errors import UsageError
    from guidestack.io.images import read_image
    from pydantic import ValidationError

    from .symmetry import MirrorSymmetryOptions

    try:  # the stage's own bounds on sigma and extent
        MirrorSymmetryOptions(use="mirror-symmetry", sigma=args.sigma, extent=args.extent)
    except ValidationError as exc:
        problems = "; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"guidestack mirror-score: {problems}") from exc
    rows = []
    for path in args.images:
        loaded = read_image(path)
        score = mirror_score(loaded.tensor[None], args.sigma, args.extent)
        rows.append({"path": path, "size": list(loaded.size), "score": float(score[0])})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["path"]) for r in rows)
        for r in rows:
            print(f"{r['path']:<{width}}  {r['score']:.6f}")
    return 0
