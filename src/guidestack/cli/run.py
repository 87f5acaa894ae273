"""``guidestack run``: restore every input with a recipe, safely.

Nothing is written until the recipe, the prior and the output folder are known to be usable;
existing outputs are never replaced without ``--overwrite``; every file is written atomically;
an input that cannot be read or fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from guidestack import __version__
from guidestack.engine.context import Observation
from guidestack.engine.device import pick_device
from guidestack.engine.errors import GuidestackError, InputError, UsageError
from guidestack.engine.prior_source import load_prior
from guidestack.engine.recipe import load_recipe, recipe_requirements
from guidestack.engine.registry import Registry
from guidestack.engine.run import derive_seed, run_recipe
from guidestack.io.images import (
    IMAGE_SUFFIXES,
    LoadedImage,
    check_same_size,
    expand_inputs,
    read_image,
    to_square,
)
from guidestack.io.outputs import prepare_output_dir, save_image, save_pil, write_json
from guidestack.io.pictures import compare_grid, trajectory_strip

from .progress import Progress

MANIFEST = "run.json"


@dataclass
class Item:
    """One input of a run and what happened to it."""

    path: Path
    name: str
    seed: int
    status: str = "pending"
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    image: LoadedImage | None = None
    mask: LoadedImage | None = None
    reference: LoadedImage | None = None
    info: dict[str, Any] = field(default_factory=dict)


def companion(ref: str | None, item: Item, what: str) -> Path | None:
    """The mask/reference for ``item``: one file for all inputs, or a same-named file in a folder."""
    if ref is None:
        return None
    path = Path(ref).expanduser()
    if path.is_dir():
        for suffix in IMAGE_SUFFIXES:
            for candidate in (
                path / (item.path.stem + suffix),
                path / (item.path.stem + suffix.upper()),
            ):
                if candidate.is_file():
                    return candidate
        raise InputError(
            f"no {what} for {item.path.name} in folder {path} (expected {item.path.stem}.png or similar)"
        )
    return path


def _planned(items: list[Item], trajectory: bool, outdir: Path | None = None) -> list[str]:
    """Output names the run will write (face crops, whose number is unknown in advance, are
    planned as those already present for the same input, so they are protected too)."""
    names = []
    for item in items:
        names += [f"{item.name}.png", f"{item.name}_compare.png"]
        if trajectory:
            names.append(f"{item.name}_trajectory.png")
        if outdir is not None and (outdir / "faces").is_dir():
            names += [
                f"faces/{p.name}" for p in sorted((outdir / "faces").glob(f"{item.name}_face*.png"))
            ]
    return names


def load_item(item: Item, args: argparse.Namespace) -> None:
    item.image = read_image(item.path)
    item.warnings += item.image.warnings
    mask_path = companion(args.mask, item, "mask")
    if mask_path is not None:
        item.mask = read_image(mask_path, kind="mask")
        check_same_size(item.path, item.image, mask_path, item.mask)
        item.warnings += item.mask.warnings
    ref_path = companion(args.reference, item, "reference")
    if ref_path is not None:
        item.reference = read_image(ref_path)
        item.warnings += item.reference.warnings


def observation_for(batch: list[Item], size: int) -> Observation:
    images, masks, refs, meta = [], [], [], []
    for item in batch:
        img, placement = to_square(item.image.tensor, size)
        images.append(img)
        item.info["placement"] = placement.to_dict()
        if item.mask is not None:
            masks.append(to_square(item.mask.tensor, size, kind="mask")[0])
        if item.reference is not None:
            refs.append(to_square(item.reference.tensor, size)[0])
        meta.append({"name": item.name, "path": str(item.path)})
    return Observation(
        image=torch.stack(images),
        mask=torch.stack(masks) if masks else None,
        reference=torch.stack(refs) if refs else None,
        meta=meta,
    )


def run_command(args: argparse.Namespace, registry: Registry) -> int:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.trajectory < 0:
        raise UsageError("--trajectory must be >= 0")
    paths = expand_inputs(args.inputs)
    items = [Item(path=p, name=p.stem, seed=derive_seed(args.seed, p.stem)) for p in paths]
    seen: dict[str, Path] = {}
    for item in items:
        if item.name in seen:
            raise UsageError(
                f"inputs {seen[item.name]} and {item.path} would both write {item.name}.png; rename one"
            )
        seen[item.name] = item.path

    overrides = list(args.overrides) + (
        [f"sampler.steps={args.steps}"] if args.steps is not None else []
    )
    if getattr(args, "deterministic", False):
        overrides.append("sampler.deterministic=true")
    draft = load_recipe(args.recipe, registry, overrides)
    device = pick_device(args.device)
    prior = load_prior(
        args.prior or draft.prior.name,
        registry,
        device=device,
        dtype=args.dtype or draft.prior.dtype,
    )
    recipe = load_recipe(
        args.recipe, registry, overrides, prior_name=prior.name, prior_kind=prior.kind
    )
    needs = recipe_requirements(recipe, registry)
    if "mask" in needs and args.mask is None:
        raise UsageError(
            f"recipe {recipe.source} needs a mask (white = missing): pass --mask FILE or --mask FOLDER"
        )
    if "reference" in needs and args.reference is None:
        raise UsageError(
            f"recipe {recipe.source} needs a reference image: pass --reference FILE or FOLDER"
        )

    fingerprint = _fingerprint(recipe, prior, args)
    outdir = Path(args.output)
    finished = _finished_inputs(outdir, fingerprint) if args.resume else {}
    for item in items:
        if item.name in finished:
            item.status, item.info = "done", {**finished[item.name], "resumed": True}
    todo = [item for item in items if item.status == "pending"]
    if args.faces and args.mask is not None:
        raise UsageError(
            "--mask cannot be combined with --faces: masks are given per aligned face, not per photo"
        )
    planned = _planned(todo, args.trajectory > 0, outdir) + ([] if args.resume else [MANIFEST])
    outdir = prepare_output_dir(outdir, planned, args.overwrite or args.resume)

    for item in todo:
        try:
            load_item(item, args)
        except InputError as exc:
            item.status, item.error = "refused", str(exc)
            print(f"error: {exc}", file=sys.stderr)

    report: dict[str, Any] = {
        "guidestack": __version__,
        "recipe_source": recipe.source,
        "recipe": recipe.resolved(),
        "prior": prior.describe(),
        "device": str(device),
        "seed": args.seed,
        "fingerprint": fingerprint,
        "inputs": [_item_report(i) for i in items],
    }
    write_json(report, outdir / MANIFEST)  # the manifest exists before any work starts
    runnable = [item for item in items if item.status == "pending"]
    progress = Progress(enabled=not args.quiet)
    for start in range(0, len(runnable), args.batch_size):
        batch = runnable[start : start + args.batch_size]
        _run_batch(batch, recipe, prior, registry, device, outdir, args, progress)
        report["inputs"] = [_item_report(i) for i in items]
        write_json(report, outdir / MANIFEST)
    progress.close()

    failed = [i for i in items if i.status != "done"]
    done = len(items) - len(failed)
    print(f"{done} of {len(items)} image(s) restored into {outdir}", file=sys.stderr)
    if any(i.status == "failed" for i in items):
        return 1
    return 2 if failed else 0


def _fingerprint(recipe, prior, args: argparse.Namespace) -> str:
    """What must be equal for a resumed run to continue the same computation."""
    key = {
        "recipe": recipe.resolved(),
        "prior": prior.describe(),
        "seed": args.seed,
        "mask": args.mask,
        "reference": args.reference,
        "trajectory": args.trajectory,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished_inputs(outdir: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Inputs a previous run of the same recipe, prior and seed finished (outputs present)."""
    manifest = outdir / MANIFEST
    if not manifest.is_file():
        raise UsageError(
            f"--resume: {manifest} does not exist; there is no run to resume in {outdir}"
        )
    try:
        previous = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--resume: cannot read {manifest}: {exc}") from exc
    if previous.get("fingerprint") != fingerprint:
        raise UsageError(
            f"--resume: {outdir} holds a run with another recipe, prior, seed, mask or reference; "
            "resume with the same arguments, or choose another output folder"
        )
    finished = {}
    for entry in previous.get("inputs", []):
        outputs = entry.get("outputs", [])
        if (
            entry.get("status") == "done"
            and outputs
            and all((outdir / o).is_file() for o in outputs)
        ):
            finished[entry["name"]] = {
                k: v for k, v in entry.items() if k not in ("name", "path", "seed", "status")
            }
    return finished


class _Watcher:
    """Progress bar updates and x0 frames for the trajectory strip, from the loop's events."""

    def __init__(self, label: str, progress: Progress, trajectory: int):
        self.label, self.progress, self.trajectory = label, progress, trajectory
        self.frames: list[tuple[int, torch.Tensor]] = []
        self.wanted: set[int] = set()

    def __call__(self, event: str, **info: Any) -> None:
        if event == "start":
            total = int(info["total"])
            self.progress.start(self.label, total)
            n = min(self.trajectory, total)
            self.wanted = {round(k * (total - 1) / max(1, n - 1)) for k in range(n)} if n else set()
        elif event == "step":
            self.progress.advance(info.get("postfix"))
            state = info.get("state")
            if state is not None and info["index"] in self.wanted and state.x0 is not None:
                self.frames.append((int(info["t"]), state.x0.detach().float().cpu()))
        elif event == "iteration":
            self.progress.advance(info.get("postfix"))


def _run_batch(
    batch, recipe, prior, registry, device, outdir: Path, args, progress: Progress
) -> None:
    if args.faces:
        for item in batch:
            run_faces(item, recipe, prior, registry, device, outdir, args, progress)
        return
    obs = observation_for(batch, prior.image_size)
    label = batch[0].name if len(batch) == 1 else f"{batch[0].name} (+{len(batch) - 1})"
    watcher = _Watcher(label, progress, args.trajectory)
    callback = watcher
    frames = watcher.frames

    started = time.perf_counter()
    try:
        result, ctx = run_recipe(
            recipe, prior, obs, [i.seed for i in batch], registry, device=device, callback=callback
        )
    except GuidestackError as exc:
        for item in batch:
            item.status, item.error = "failed", str(exc)
        print(f"error: {exc}", file=sys.stderr)
        return
    elapsed = time.perf_counter() - started
    output = result.image.detach().float().cpu()
    for k, item in enumerate(batch):
        save_image(output[k], outdir / f"{item.name}.png")
        panels = [("input", obs.image[k].cpu())]
        if obs.mask is not None:
            panels.append(("mask", obs.mask[k].cpu()))
        if obs.reference is not None:
            panels.append(("reference", obs.reference[k].cpu()))
        panels.append(("output", output[k]))
        save_pil(compare_grid(panels), outdir / f"{item.name}_compare.png")
        if args.trajectory:
            save_pil(
                trajectory_strip([(t, x0[k]) for t, x0 in frames]),
                outdir / f"{item.name}_trajectory.png",
            )
        item.status = "done"
        item.info.update(
            {
                "seconds": elapsed / len(batch),
                "model_calls": ctx.model_calls,
                "start_t": ctx.report.get("start_t"),
                "outputs": [f"{item.name}.png", f"{item.name}_compare.png"]
                + ([f"{item.name}_trajectory.png"] if args.trajectory else []),
                "stages": _per_sample(ctx.report, k, len(batch)),
            }
        )


def _per_sample(report: dict[str, Any], k: int, n: int) -> dict[str, Any]:
    """Sample ``k``'s share of a run report: lists with one entry per sample are split (the
    convention stages follow for per-sample values), nested tables likewise."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        if key in ("grid", "seeds"):
            continue
        if isinstance(value, dict):
            out[key] = _per_sample(value, k, n)
        elif isinstance(value, list) and len(value) == n and n > 1:
            out[key] = value[k]
        else:
            out[key] = value
    return out


def run_faces(item: Item, recipe, prior, registry, device, outdir: Path, args, progress) -> None:
    """``--faces``: restore every face of a photo (aligned to the prior's template) and paste
    each back; one run of the recipe with all faces of the photo as its batch."""
    from guidestack.plugins.faces.pipeline import restore_faces

    size = prior.image_size
    watcher = _Watcher(item.name, progress, args.trajectory)
    runs: list[Any] = []

    def restore_fn(aligned: torch.Tensor) -> torch.Tensor:
        n = aligned.shape[0]
        reference = None
        if item.reference is not None:
            reference = to_square(item.reference.tensor, size)[0][None].expand(n, -1, -1, -1)
        obs = Observation(
            image=aligned,
            reference=reference,
            meta=[{"name": f"{item.name}:face{i:02d}"} for i in range(n)],
        )
        seeds = [derive_seed(args.seed, f"{item.name}:face{i:02d}") for i in range(n)]
        result, ctx = run_recipe(
            recipe, prior, obs, seeds, registry, device=device, callback=watcher
        )
        runs.append((ctx, seeds))
        return result.image.detach().float().cpu()

    started = time.perf_counter()
    try:
        options = {"min_face": args.min_face, "threshold": args.face_threshold}
        found = restore_faces(
            item.image.tensor,
            restore_fn,
            size,
            upscale=args.upscale,
            **{k: v for k, v in options.items() if v is not None},
        )
    except GuidestackError as exc:
        item.status, item.error = "failed", str(exc)
        print(f"error: {exc}", file=sys.stderr)
        return
    save_image(found.image, outdir / f"{item.name}.png")
    original = item.image.tensor
    panels = [("input", original), ("output", found.image)]
    save_pil(compare_grid(panels), outdir / f"{item.name}_compare.png")
    outputs = [f"{item.name}.png", f"{item.name}_compare.png"]
    if found.faces:
        (outdir / "faces").mkdir(exist_ok=True)
    for i, face in enumerate(found.faces):
        for kind, tensor in (("aligned", face.aligned), ("restored", face.restored)):
            name = f"faces/{item.name}_face{i:02d}_{kind}.png"
            save_image(tensor, outdir / name)
            outputs.append(name)
    if args.trajectory and watcher.frames:
        name = f"{item.name}_trajectory.png"
        save_pil(trajectory_strip([(t, x0[0]) for t, x0 in watcher.frames]), outdir / name)
        outputs.append(name)
    item.warnings += found.warnings
    item.status = "done"
    ctx = runs[0][0] if runs else None
    item.info.update(
        {
            "seconds": time.perf_counter() - started,
            "model_calls": ctx.model_calls if ctx else 0,
            "outputs": outputs,
            **found.report(),
            "face_seeds": runs[0][1] if runs else [],
        }
    )


def _item_report(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": item.name,
        "path": str(item.path),
        "seed": item.seed,
        "status": item.status,
    }
    if item.error:
        out["error"] = item.error
    if item.warnings:
        out["warnings"] = item.warnings
    out.update(item.info)
    return out
