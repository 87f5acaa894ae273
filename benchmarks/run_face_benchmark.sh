#!/usr/bin/env bash
# The face benchmark of docs/benchmarks.md: the offline Gaussian prior (gaussian-faces-64) on
# the 14 aligned faces of ../shared/data/faces/hq, four degradations, the recipes that fit each.
# Usage: benchmarks/run_face_benchmark.sh [OUTDIR]   (default /tmp/guidestack-face-benchmark)
# Reports land in OUTDIR/<degradation>/ (results.md, report.html, grids). They contain the clean
# and degraded faces, so they stay outside the repository; docs/benchmarks/ keeps only the
# tables and grids of restored outputs (copied by the loop at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/guidestack-face-benchmark}"
FACES=../shared/data/faces/hq
LPIPS=../shared/data/weights/lpips_alexnet_backbone.pt
GS="${GUIDESTACK:-guidestack}"
common=(--clean "$FACES" --prior gaussian-faces-64 --seed 0 --lpips-backbone "$LPIPS" --overwrite --quiet)

"$GS" bench restore difface odedit-light shred-deblur-blind --degradation gaussian-blur-kernel:4 \
  -o "$OUT/blur" "${common[@]}"
"$GS" bench restore difface shred-sr4 --degradation downsample:2 -o "$OUT/sr4" "${common[@]}"
"$GS" bench inpaint difface-inpaint shred-inpaint --degradation free-form-mask:3 \
  -o "$OUT/inpaint" "${common[@]}"
"$GS" bench odedit odedit-light restore --degradation random-lines:3 -o "$OUT/lines" "${common[@]}"

# what docs/benchmarks/ keeps: the tables only. Restored outputs of these faces are not kept:
# an inpainted or lightly restored face is still the (licence-restricted) source face.
mkdir -p docs/benchmarks
for d in blur sr4 inpaint lines; do
  cp "$OUT/$d/results.md" "docs/benchmarks/$d.md"
done

# pictures for the docs come from the public-domain example faces (examples/faces) instead
PD="$OUT/public-domain-faces"
mkdir -p "$PD"
cp examples/faces/astronaut.png examples/faces/grace_hopper.png "$PD/"
"$GS" bench inpaint difface-inpaint shred-inpaint --degradation free-form-mask:3 \
  -o "$OUT/examples-inpaint" --clean "$PD" --prior gaussian-faces-64 --seed 0 --overwrite --quiet
"$GS" bench restore odedit-light shred-deblur-blind --degradation gaussian-blur-kernel:4 \
  -o "$OUT/examples-blur" --clean "$PD" --prior gaussian-faces-64 --seed 0 --overwrite --quiet
cp "$OUT/examples-inpaint/grid.png" docs/benchmarks/examples_inpaint.png
cp "$OUT/examples-blur/grid.png" docs/benchmarks/examples_blur.png
