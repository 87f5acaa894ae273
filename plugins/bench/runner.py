"""``guidestack bench``: degrade clean faces, restore them with recipes, measure, report.

Only the public API is used (recipe and prior loading, :func:`run_recipe`, image I/O, outputs,
pictures), so a benchmark measures exactly what ``guidestack run`` does.  Seeds: one ``--seed``;
face ``name`` is damaged with ``degrade_seed(seed, name)`` and restored with
``derive_seed(seed, name)`` (the seed ``run`` would use), so rows are reproducible one by one.

Outputs in OUTDIR: ``results.csv`` (one line per method and face), ``results.md`` (mean and 95%
t-interval per metric and method, skipped methods with the reason, unavailable metrics with the
reason), ``report.html`` (one self-contained file, thumbnails as base64 PNG data URIs), grids
``grid.png`` (clean | degraded | methods per face) and ``grid_outputs.png`` (restored outputs
only), the degraded inputs, masks and every output under ``images/``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from guidestack import GuidestackError, InputError, Registry, UsageError, api
from guidestack.io.images import expand_inputs, read_image, to_square
from guidestack.io.outputs import (
    prepare_output_dir,
    save_image,
    save_mask,
    save_pil,
    write_json,
    write_text,
)
from guidestack.io.pictures import make_grid, panel_image
from guidestack.plugins.degradations.command import degrade_one, degrade_seed

BASELINE = "degraded"
METRICS = ("psnr", "ssim", "lpips", "identity")
#: which way is better, for the tables
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "identity": True}


@dataclass
class BenchOptions:
    recipes: list[str]
    clean: list[Path]
    degradation: str
    outdir: Path
    prior: str | None = None
    seed: int = 0
    steps: int | None = None
    overrides: list[str] = field(default_factory=list)
    lpips_backbone: str | None = None
    identity_weights: str | None = None
    limit: int | None = None
    device: torch.device | str = "cpu"
    overwrite: bool = False
    quiet: bool = False


@dataclass
class Row:
    method: str
    image: str
    status: str = "ok"  # ok | failed | skipped
    values: dict[str, float | None] = field(default_factory=dict)
    model_calls: int | None = None
    seconds: float | None = None
    note: str = ""
    output: torch.Tensor | None = None


@dataclass
class BenchResult:
    rows: list[Row]
    methods: list[str]
    skipped: dict[str, str]
    unavailable: dict[str, str]
    faces: list[str]
    files: dict[str, Path]


# --- metrics ------------------------------------------------------------------------------


Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def metric_suite(
    lpips_backbone: str | None, identity_weights: str | None, device: torch.device | str
) -> tuple[dict[str, Metric], dict[str, str]]:
    """The metrics that can run here, and the reason for each that cannot (never faked): a
    network metric is probed once on a tiny pair, so a missing or wrong weights file shows up as
    "unavailable: <reason>" in the report instead of a failed benchmark."""
    from guidestack.plugins.metrics.common import MetricUnavailable
    from guidestack.plugins.metrics.fidelity import psnr, ssim
    from guidestack.plugins.metrics.perceptual import lpips_distance

    available: dict[str, Metric] = {"psnr": psnr, "ssim": ssim}
    unavailable: dict[str, str] = {}
    candidates: dict[str, Metric] = {
        "lpips": lambda x, y: lpips_distance(x, y, backbone=lpips_backbone)
    }
    probe = torch.zeros(1, 3, 64, 64, device=device)
    for name, fn in candidates.items():
        try:
            fn(probe, probe)
        except (MetricUnavailable, OSError) as exc:
            unavailable[name] = str(exc)
        else:
            available[name] = fn
    from guidestack.plugins.metrics.identity import identity_cosine

    probed = identity_cosine(probe, probe, weights=identity_weights)
    if probed.values is None:
        unavailable["identity"] = probed.reason or "unavailable"
    else:
        available["identity"] = lambda x, y: identity_cosine(x, y, weights=identity_weights).values
    return available, unavailable


# --- statistics ---------------------------------------------------------------------------


#: Student's t 0.975 quantiles for 1..30 degrees of freedom (scipy.stats.t.ppf, 6 decimals)
T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
Z975 = 1.959963984540054


def t975(df: int) -> float:
    """Student's t 0.975 quantile: a table up to 30 degrees of freedom, then the Cornish-Fisher
    expansion (error < 3e-8 there), so no scipy is needed."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z, v = Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def mean_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and half-width of its 95% t-interval (``None`` below two values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t975(n - 1) * sd / math.sqrt(n)


# --- the benchmark ------------------------------------------------------------------------


def _faces(paths: Sequence[Path], limit: int | None) -> list[Path]:

    faces = expand_inputs([str(p) for p in paths])
    faces = faces[:limit] if limit else faces
    if not faces:
        raise UsageError("--clean has no images")
    return faces


def _say(opts: BenchOptions, text: str) -> None:
    if not opts.quiet:
        print(text, file=sys.stderr)


def run_bench(opts: BenchOptions, registry: Registry) -> BenchResult:
    overrides = list(opts.overrides) + (
        [f"sampler.steps={opts.steps}"] if opts.steps is not None else []
    )
    drafts = [api.load_recipe(r, set=overrides, registry=registry) for r in opts.recipes]
    from guidestack.plugins.degradations.apply import build_spec

    build_spec(opts.degradation, registry)  # fail on a bad spec before anything runs
    prior = api.load_prior(
        opts.prior or drafts[0].prior.name, device=opts.device, registry=registry
    )
    recipes = [draft.for_prior(prior, registry) for draft in drafts]
    labels = [Path(r).stem if r.endswith(".toml") else r for r in opts.recipes]
    if len(set(labels)) != len(labels) or BASELINE in labels:
        raise UsageError(f"recipe names must be distinct and not '{BASELINE}': {labels}")
    paths = _faces(opts.clean, opts.limit)
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise UsageError("two clean faces share a file name; rename one")
    planned = ["results.csv", "results.md", "report.html", "bench.json", "grid.png"]
    planned += ["grid_outputs.png"]
    outdir = prepare_output_dir(opts.outdir, planned, opts.overwrite)
    metrics, unavailable = metric_suite(opts.lpips_backbone, opts.identity_weights, opts.device)

    size = prior.image_size
    clean: dict[str, torch.Tensor] = {}
    degraded: dict[str, torch.Tensor] = {}
    # what the recipes are given: the degraded face, at its own (low) resolution for a
    # downsampling, as a user's low-resolution photo would be (restorations at the prior's size)
    given: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor | None] = {}
    facts: dict[str, Any] = {}
    for path in paths:
        try:
            x = to_square(read_image(path).tensor, size)[0][None].to(opts.device)
        except InputError as exc:
            raise InputError(f"clean face {path}: {exc}") from None
        measured: list[torch.Tensor] = []
        y, mask, info = degrade_one(
            opts.degradation, x, degrade_seed(opts.seed, path.stem), registry, measured=measured
        )
        clean[path.stem], degraded[path.stem], masks[path.stem] = x, y, mask
        given[path.stem] = measured[0]
        facts[path.stem] = info
    rows: list[Row] = []
    for name in names:
        rows.append(Row(BASELINE, name, output=degraded[name], model_calls=0, seconds=0.0))

    skipped: dict[str, str] = {}
    for label, recipe in zip(labels, recipes, strict=True):
        needs = api.requirements(recipe, registry=registry)
        reason = _cannot_give(needs, masks, opts.degradation)
        if reason:
            skipped[label] = reason
            rows += [Row(label, n, status="skipped", note=reason) for n in names]
            _say(opts, f"{label}: skipped ({reason})")
            continue
        for name in names:
            mask = masks[name][0] if "mask" in needs else None
            started = time.perf_counter()
            try:
                result = api.run(
                    recipe,
                    prior,
                    given[name][0],
                    mask=mask,
                    seed=opts.seed,
                    names=[name],
                    device=opts.device,
                    output_size="prior",
                    registry=registry,
                )
            except (GuidestackError, RuntimeError, ValueError) as exc:
                rows.append(Row(label, name, status="failed", note=f"{type(exc).__name__}: {exc}"))
                _say(opts, f"{label} on {name}: failed ({exc})")
                continue
            seconds = time.perf_counter() - started
            image = result.image[None].to(opts.device)
            calls = result.entry["model_calls"]
            rows.append(Row(label, name, output=image, model_calls=calls, seconds=seconds))
            _say(opts, f"{label} on {name}: {seconds:.2f} s, {calls} model calls")

    for row in rows:
        if row.output is None:
            continue
        for metric in METRICS:
            fn = metrics.get(metric)
            if fn is None:
                row.values[metric] = None
                continue
            with torch.no_grad():
                row.values[metric] = float(fn(row.output, clean[row.image]).reshape(-1)[0])

    methods = [BASELINE, *labels]
    files = _write_all(outdir, opts, prior, rows, methods, names, clean, degraded, masks, facts)
    files.update(
        _write_tables(outdir, opts, prior, rows, methods, names, skipped, unavailable, clean)
    )
    return BenchResult(rows, methods, skipped, unavailable, names, files)


def _cannot_give(needs: set[str], masks: dict[str, torch.Tensor | None], spec: str) -> str:
    if "reference" in needs:
        return "needs a reference photo of the same person, which the benchmark does not have"
    if "mask" in needs and any(m is None for m in masks.values()):
        return f"needs a mask, and degradation '{spec}' hides no pixels"
    other = sorted(needs - {"mask", "reference"})
    if other:
        return f"needs {', '.join(other)}, which the benchmark cannot give"
    return ""


# --- writing ------------------------------------------------------------------------------


def _write_all(
    outdir: Path,
    opts: BenchOptions,
    prior: Any,
    rows: list[Row],
    methods: list[str],
    names: list[str],
    clean: dict[str, torch.Tensor],
    degraded: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor | None],
    facts: dict[str, Any],
) -> dict[str, Path]:
    images = outdir / "images"
    for name in names:
        (images / BASELINE).mkdir(parents=True, exist_ok=True)
        save_image(degraded[name][0], images / BASELINE / f"{name}.png")
        if masks[name] is not None:
            save_mask(masks[name][0], images / BASELINE / f"{name}_mask.png")
    for row in rows:
        if row.output is not None and row.method != BASELINE:
            (images / row.method).mkdir(parents=True, exist_ok=True)
            save_image(row.output[0], images / row.method / f"{row.image}.png")
    by_key = {(r.method, r.image): r for r in rows}
    grid = make_grid(
        [[clean[n][0]] + [_out(by_key, m, n) for m in methods] for n in names],
        row_labels=names,
        col_labels=["clean", *methods],
    )
    restored = [m for m in methods if m != BASELINE]
    files = {"grid": save_pil(grid, outdir / "grid.png")}
    if restored and any(_out(by_key, m, n) is not None for m in restored for n in names):
        outputs_only = make_grid(
            [[_out(by_key, m, n) for m in restored] for n in names],
            row_labels=names,
            col_labels=restored,
        )
        files["grid_outputs"] = save_pil(outputs_only, outdir / "grid_outputs.png")
    files["bench.json"] = write_json(
        {
            "degradation": opts.degradation,
            "seed": opts.seed,
            "prior": prior.describe(),
            "recipes": opts.recipes,
            "overrides": opts.overrides,
            "steps": opts.steps,
            "faces": {n: facts[n] for n in names},
        },
        outdir / "bench.json",
    )
    return files


def _out(by_key: dict[tuple[str, str], Row], method: str, name: str) -> torch.Tensor | None:
    row = by_key.get((method, name))
    return None if row is None or row.output is None else row.output[0]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def summary_rows(
    rows: list[Row], methods: list[str], unavailable: dict[str, str]
) -> list[dict[str, Any]]:
    """Per method: n, and per metric (and seconds, model calls) the mean and 95% half-width."""
    out = []
    for method in methods:
        mine = [r for r in rows if r.method == method and r.status == "ok"]
        entry: dict[str, Any] = {"method": method, "n": len(mine)}
        for key in (*METRICS, "seconds", "model_calls"):
            if key in unavailable:
                entry[key] = None
                continue
            values = [_value(r, key) for r in mine]
            values = [v for v in values if v is not None]
            entry[key] = mean_interval(values) if values else None
        out.append(entry)
    return out


def _value(row: Row, key: str) -> float | None:
    if key == "seconds":
        return row.seconds
    if key == "model_calls":
        return None if row.model_calls is None else float(row.model_calls)
    return row.values.get(key)


def _cell(stat: tuple[float, float | None] | None, digits: int) -> str:
    if stat is None:
        return "n/a"
    mean, half = stat
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3, "identity": 3, "seconds": 2, "model_calls": 0}
HEADERS = {
    "psnr": "PSNR (dB) ↑",
    "ssim": "SSIM ↑",
    "lpips": "LPIPS ↓",
    "identity": "identity cos ↑",
    "seconds": "s / image",
    "model_calls": "model calls",
}


def _write_tables(
    outdir: Path,
    opts: BenchOptions,
    prior: Any,
    rows: list[Row],
    methods: list[str],
    names: list[str],
    skipped: dict[str, str],
    unavailable: dict[str, str],
    clean: dict[str, torch.Tensor],
) -> dict[str, Path]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "image", *METRICS, "model_calls", "seconds", "status", "note"])
    for r in rows:
        writer.writerow(
            [r.method, r.image]
            + [_fmt(r.values.get(m)) for m in METRICS]
            + [
                "" if r.model_calls is None else r.model_calls,
                _fmt(r.seconds, 3),
                r.status,
                r.note,
            ]
        )
    files = {"results.csv": write_text(buf.getvalue(), outdir / "results.csv")}

    summary = summary_rows(rows, methods, unavailable)
    keys = [*METRICS, "seconds", "model_calls"]
    lines = [
        f"# Benchmark: {opts.degradation} on {len(names)} faces",
        "",
        f"Prior `{prior.name}`, seed {opts.seed}, recipes {', '.join(opts.recipes)}"
        + (f", steps {opts.steps}" if opts.steps else "")
        + (f", overrides {' '.join(opts.overrides)}" if opts.overrides else "")
        + f". Faces resized to {prior.image_size}x{prior.image_size}; metrics against the clean "
        "face. Cells: mean ± half-width of the 95% t-interval over faces. "
        f"`{BASELINE}` is the degraded input itself (the baseline).",
        "",
        "| method | n | " + " | ".join(HEADERS[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for s in summary:
        cells = [_cell(s[k], DIGITS[k]) for k in keys]
        lines.append(f"| {s['method']} | {s['n']} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- `{m}`: {why}" for m, why in skipped.items()]
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        lines += ["", "Failed runs:", ""] + [
            f"- `{r.method}` on {r.image}: {r.note}" for r in failed
        ]
    if unavailable:
        lines += ["", "Unavailable metrics:", ""]
        lines += [f"- {HEADERS[m]}: {why}" for m, why in unavailable.items()]
    markdown = "\n".join(lines) + "\n"
    files["results.md"] = write_text(markdown, outdir / "results.md")
    files["report.html"] = write_text(
        _html(opts, prior, rows, methods, names, summary, skipped, unavailable, clean, keys),
        outdir / "report.html",
    )
    return files


def data_uri(tensor: torch.Tensor, height: int = 128) -> str:
    """A ``[C, H, W]`` image as an inline PNG (``data:image/png;base64,...``)."""
    picture = panel_image(tensor)
    if picture.height != height:
        width = max(1, round(picture.width * height / picture.height))
        picture = picture.resize((width, height), resample=0)  # nearest: show the real pixels
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _html(
    opts: BenchOptions,
    prior: Any,
    rows: list[Row],
    methods: list[str],
    names: list[str],
    summary: list[dict[str, Any]],
    skipped: dict[str, str],
    unavailable: dict[str, str],
    clean: dict[str, torch.Tensor],
    keys: list[str],
) -> str:
    e = html.escape
    by_key = {(r.method, r.image): r for r in rows}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>guidestack bench: {e(opts.degradation)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:center;font-size:13px}"
        "img{display:block;image-rendering:pixelated}.note{color:#a00;font-size:12px}</style>",
        "</head><body>",
        f"<h1>{e(opts.degradation)} on {len(names)} faces</h1>",
        f"<p>Prior <code>{e(prior.name)}</code>, seed {opts.seed}, recipes "
        f"{e(', '.join(opts.recipes))}. Mean ± 95% t-interval over faces; "
        f"<code>{BASELINE}</code> is the degraded input.</p>",
        "<table><tr><th>method</th><th>n</th>"
        + "".join(f"<th>{e(HEADERS[k])}</th>" for k in keys)
        + "</tr>",
    ]
    for s in summary:
        parts.append(
            f"<tr><td>{e(s['method'])}</td><td>{s['n']}</td>"
            + "".join(f"<td>{e(_cell(s[k], DIGITS[k]))}</td>" for k in keys)
            + "</tr>"
        )
    parts.append("</table>")
    for title, table in (("Skipped", skipped), ("Unavailable metrics", unavailable)):
        if table:
            parts.append(f"<h3>{title}</h3><ul>")
            parts += [f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in table.items()]
            parts.append("</ul>")
    parts.append("<h2>Faces</h2><table><tr><th>face</th><th>clean</th>")
    parts += [f"<th>{e(m)}</th>" for m in methods]
    parts.append("</tr>")
    for name in names:
        parts.append(f"<tr><td>{e(name)}</td><td><img src='{data_uri(clean[name][0])}'></td>")
        for m in methods:
            row = by_key.get((m, name))
            if row is None or row.output is None:
                note = "" if row is None else f"{row.status}: {row.note}"
                parts.append(f"<td class='note'>{e(note)}</td>")
                continue
            caption = " ".join(
                f"{k}={row.values[k]:.3g}" for k in METRICS if row.values.get(k) is not None
            )
            parts.append(
                f"<td><img src='{data_uri(row.output[0])}' alt='{e(m)}'>"
                f"<small>{e(caption)}</small></td>"
            )
        parts.append("</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"
