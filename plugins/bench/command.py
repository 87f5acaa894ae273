"""``guidestack bench`` arguments and entry (the work is in :mod:`.runner`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from guidestack import Registry

DESCRIPTION = "degrade clean faces, restore them with recipes, write metrics and a report"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="+", help="built-in recipe names or .toml files")
    p.add_argument("--clean", required=True, action="append", help="folder or files of clean faces")
    p.add_argument(
        "--degradation",
        required=True,
        metavar="NAME[:SEVERITY]",
        help="e.g. gaussian-blur-kernel:3",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--prior", help="prior name or path (default: the first recipe's)")
    p.add_argument("--seed", type=int, default=0, help="one seed for all damage and sampling")
    p.add_argument("--steps", type=int, help="override sampler.steps of every recipe")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a value in every recipe (TOML-typed)",
    )
    p.add_argument("--limit", type=int, help="use only the first N clean faces")
    p.add_argument(
        "--lpips-backbone",
        help="LPIPS backbone weights file (else torchvision's cache; else LPIPS is unavailable)",
    )
    p.add_argument(
        "--identity-weights", help="face-embedding weights for identity cosine (else unavailable)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """``guidestack bench``: exit 1 when a run failed."""
    from guidestack.api import pick_device

    from .runner import BenchOptions, run_bench

    opts = BenchOptions(
        recipes=list(args.recipes),
        clean=[Path(c) for c in args.clean],
        degradation=args.degradation,
        outdir=Path(args.output),
        prior=args.prior,
        seed=args.seed,
        steps=args.steps,
        overrides=list(args.overrides),
        lpips_backbone=args.lpips_backbone,
        identity_weights=args.identity_weights,
        limit=args.limit,
        device=pick_device(args.device),
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    result = run_bench(opts, registry)
    print((opts.outdir / "results.md").read_text(), end="")
    print(f"report: {result.files['report.html']}", file=sys.stderr)
    failed = any(r.status == "failed" for r in result.rows)
    return 1 if failed else 0
