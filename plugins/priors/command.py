"""``guidestack prior fit``: fit a Gaussian (probabilistic PCA) prior from a folder of faces."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from guidestack.engine.errors import UsageError
from guidestack.engine.registry import Registry

DESCRIPTION = "prior tools"


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="prior_command", required=True, parser_class=type(p))
    fit = sub.add_parser(
        "fit", help="fit a Gaussian (probabilistic PCA) prior from a folder of aligned faces"
    )
    fit.add_argument("folder")
    fit.add_argument("-o", "--output", required=True, help="output .pt file")
    fit.add_argument("--size", type=int, default=64)
    fit.add_argument("--components", type=int, default=32)
    fit.add_argument(
        "--no-flips", action="store_true", help="do not add horizontally flipped copies"
    )
    fit.add_argument("--overwrite", action="store_true")
    fit.add_argument(
        "--align",
        action="store_true",
        help="unaligned photos: detect faces (MTCNN, p >= 0.9), align each to the FFHQ template",
    )


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Fit, write the prior file atomically and print the report as JSON."""
    if args.prior_command != "fit":  # pragma: no cover - argparse allows only fit
        raise UsageError(f"unknown prior command {args.prior_command}")
    from .fit import fit_command

    report = fit_command(
        args.folder,
        Path(args.output),
        args.size,
        args.components,
        not args.no_flips,
        overwrite=args.overwrite,
        align=args.align,
    )
    print(json.dumps(report, indent=2, default=str))
    return 0
