"""``guidestack degrade``: write degraded copies of images (and masks where the damage hides
pixels), reproducibly: each image's randomness comes from ``--seed`` and its file name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from guidestack.engine.errors import InputError, UsageError
from guidestack.engine.recipe import parse_value
from guidestack.engine.registry import Registry
from guidestack.engine.run import derive_seed, make_generators
from guidestack.io.images import expand_inputs, read_image, to_square
from guidestack.io.outputs import prepare_output_dir, save_image, save_mask, write_json

from .apply import build_spec, degrade_batch

MANIFEST = "degrade.json"


DESCRIPTION = "write degraded copies of images (benchmarks, tests)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument(
        "--degradation",
        required=True,
        metavar="NAME[:SEVERITY]",
        help="e.g. gaussian-noise:3, jpeg:5, random (severity 1..5, default 3)",
    )
    p.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="set an option of the degradation on top of the severity (TOML-typed)",
    )
    p.add_argument("--seed", type=int, default=0, help="run seed (per image: seed + file name)")
    p.add_argument(
        "--size", type=int, help="resize to a SIZE x SIZE square first (as `run` does for a prior)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def degradation_options(assignments: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects OPTION=VALUE, got '{text}'")
        out[key.strip()] = parse_value(value)
    return out


def degrade_seed(run_seed: int, name: str) -> int:
    """The seed of an image's damage (distinct from its restoration seed ``derive_seed(s, name)``
    so damage and sampling noise are independent)."""
    return derive_seed(run_seed, f"degrade:{name}")


def degrade_one(
    spec: str,
    x: torch.Tensor,
    seed: int,
    registry: Registry,
    options: dict[str, Any] | None = None,
    measured: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Degrade ``x`` ``[1, C, H, W]`` with ``spec``; returns image, mask (or None) and facts.

    ``measured`` (a list) receives the observation at its own size when the operator shrinks
    the image (``downsample``: the low-resolution photo a user would have, where the returned
    image is its bicubic upsampling for pictures and metrics), else the returned image.
    """
    op = build_spec(spec, registry, **(options or {}))
    if op.needs_mask(op.options):
        raise UsageError(
            f"degradation '{op.name}' applies a user's mask; use box-mask or free-form-mask instead"
        )
    y, mask = degrade_batch(op, x, make_generators([seed], x.device))
    info: dict[str, Any] = {"degradation": op.describe(), "seed": seed}
    picks = getattr(op, "picks", None)
    if picks is not None:
        info["picked"] = picks()[0]
    if measured is not None:
        measured.append(low_resolution(op, x, y))
    return y, mask, info


def low_resolution(op: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``H(x)`` when it is a smaller image of ``x``'s channels (what a camera would have
    recorded), else ``y``."""
    with torch.no_grad():
        small = op(x)
    smaller = small.shape[-1] < x.shape[-1] and small.shape[-2] < x.shape[-2]
    if small.dim() == 4 and small.shape[1] == x.shape[1] and smaller:
        return small.clamp(-1, 1)
    return y


def run(args: argparse.Namespace, registry: Registry) -> int:
    """``guidestack degrade``: the exit code is 2 when an input was refused."""
    options = degradation_options(args.options)
    build_spec(args.degradation, registry, **options)  # fail on a bad spec before any output
    paths = expand_inputs(args.inputs)
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise UsageError("two inputs share a file name; rename one")
    planned = [f"{n}.png" for n in names] + [f"{n}_mask.png" for n in names] + [MANIFEST]
    outdir = prepare_output_dir(Path(args.output), planned, args.overwrite)
    report: dict[str, Any] = {"degradation": args.degradation, "seed": args.seed, "inputs": []}
    refused = 0
    for path in paths:
        try:
            image = read_image(path).tensor
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            report["inputs"].append({"path": str(path), "error": str(exc)})
            refused += 1
            continue
        if args.size:
            image = to_square(image, args.size)[0]
        y, mask, info = degrade_one(
            args.degradation, image[None], degrade_seed(args.seed, path.stem), registry, options
        )
        save_image(y[0], outdir / f"{path.stem}.png")
        entry = {"path": str(path), "output": f"{path.stem}.png", **info}
        if mask is not None:
            save_mask(mask[0], outdir / f"{path.stem}_mask.png")
            entry["mask"] = f"{path.stem}_mask.png"
        report["inputs"].append(entry)
    write_json(report, outdir / MANIFEST)
    done = len(paths) - refused
    print(f"{done} of {len(paths)} image(s) degraded into {outdir}", file=sys.stderr)
    return 2 if refused else 0
