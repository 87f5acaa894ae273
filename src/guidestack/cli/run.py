"""``guidestack run``: restore every input with a recipe, safely, through the public API.

Nothing is written until the recipe, the prior and the output folder are known to be usable;
existing outputs are never replaced without ``--overwrite``; every file is written atomically;
an input that cannot be read or fails is reported and the others still run; ``run.json`` is
rewritten after every batch so ``--resume`` can continue an interrupted run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidestack import GuidestackError, InputError, OutputError, Registry, UsageError, api
from guidestack.io.images import (
    IMAGE_SUFFIXES,
    LoadedImage,
    check_same_size,
    expand_inputs,
    read_image,
)
from guidestack.io.outputs import folder_lock, prepare_output_dir, write_json
from guidestack.progress import Progress

MANIFEST = "run.json"


@dataclass
class Item:
    """One input of a run and what happened to it."""

    path: Path
    name: str
    seed: int
    status: str = "pending"
    error: str | None = None
    image: LoadedImage | None = None
    mask: LoadedImage | None = None
    reference: LoadedImage | None = None
    mask_path: Path | None = None
    reference_path: Path | None = None
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


def load_item(item: Item, mask: str | None, reference: str | None) -> None:
    """Read the input and its companions (``InputError`` names the file at fault)."""
    item.image = read_image(item.path)
    mask_path = item.mask_path or companion(mask, item, "mask")
    if mask_path is not None:
        item.mask = read_image(mask_path, kind="mask")
        check_same_size(item.path, item.image, mask_path, item.mask)
    ref_path = item.reference_path or companion(reference, item, "reference")
    if ref_path is not None:
        item.reference = read_image(ref_path)


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


def faces_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--min-face``, ``--face-threshold``, ``--upscale`` and ``--background-upsampler`` as the
    faces pipeline's options."""
    given = {
        "min_face": args.min_face,
        "threshold": args.face_threshold,
        "upscale": args.upscale,
        "background_upsampler": args.background_upsampler,
    }
    return {k: v for k, v in given.items() if v is not None}


def output_size(text: str) -> str | int:
    """``--output-size``: ``input``, ``prior`` or a number of pixels (checked by the API)."""
    if text in ("input", "prior"):
        return text
    try:
        return int(text)
    except ValueError:
        raise UsageError(
            f"--output-size {text!r}: use input, prior or a number of pixels"
        ) from None


def run_command(args: argparse.Namespace, registry: Registry) -> int:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.trajectory < 0:
        raise UsageError("--trajectory must be >= 0")
    if not args.output:
        raise UsageError("-o/--output is empty: name the folder the results go to")
    if args.faces and args.mask is not None:
        raise UsageError(
            "--mask cannot be combined with --faces: masks are given per aligned face, not per photo"
        )
    paths = expand_inputs(args.inputs)
    items = [Item(path=p, name=p.stem, seed=api.derive_seed(args.seed, p.stem)) for p in paths]
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
    draft = api.load_recipe(args.recipe, set=overrides, registry=registry)
    device = api.pick_device(args.device)
    prior = api.load_prior(
        args.prior or draft.prior.name,
        device=device,
        dtype=args.dtype or draft.prior.dtype,
        registry=registry,
    )
    recipe = draft.for_prior(prior, registry)
    needs = api.requirements(recipe, registry=registry)
    if "mask" in needs and args.mask is None:
        raise UsageError(
            f"recipe {recipe.source} needs a mask (white = missing): pass --mask FILE or --mask FOLDER"
        )
    if "reference" in needs and args.reference is None:
        raise UsageError(
            f"recipe {recipe.source} needs a reference image: pass --reference FILE or FOLDER"
        )
    faces = faces_options(args) if args.faces else False
    if faces is not False:
        api.check_faces_options(faces, registry=registry)
    api.preflight(recipe, prior, device=device, registry=registry)
    args.output_size = output_size(str(args.output_size))
    api.check_output_size(args.output_size)
    api.resolve_upsampler(args.upsampler or recipe.output.upsampler, registry=registry)

    outdir = Path(args.output)
    for item in items:
        _find_companions(item, args)
    _refuse_inputs_among_outputs(items, outdir, args)
    limit = name_max(outdir)
    for item in items:
        if item.status == "pending":
            _check_output_names(item, args, limit)
    warn = lambda message: print(f"warning: {message}", file=sys.stderr)  # noqa: E731
    with folder_lock(outdir, warn=warn):
        return _run_locked(items, recipe, prior, registry, device, outdir, args, faces)


def _run_locked(items, recipe, prior, registry, device, outdir, args, faces) -> int:
    """The run once its folder is held: resume, check outputs, read inputs, run batches."""
    fingerprint = _fingerprint(recipe, prior, args)
    finished = _finished_inputs(outdir, fingerprint) if args.resume else {}
    for item in items:
        if item.name in finished and item.status == "pending":
            item.status, item.info = "done", {**finished[item.name], "resumed": True}
    todo = [item for item in items if item.status == "pending"]
    planned = _planned(todo, args.trajectory > 0, outdir) + ([] if args.resume else [MANIFEST])
    try:
        outdir = prepare_output_dir(outdir, planned, args.overwrite or args.resume)
    except OutputError as exc:
        raise OutputError(f"{exc}{_interrupted_hint(outdir)}") from None

    for item in todo:
        try:
            load_item(item, args.mask, args.reference)
        except InputError as exc:
            item.status, item.error = "refused", str(exc)
            print(f"error: {exc}", file=sys.stderr)

    report: dict[str, Any] = {
        **api.run_report(recipe, prior, device, args.seed),
        "fingerprint": fingerprint,
        "inputs": [_item_report(i) for i in items],
    }
    write_json(report, outdir / MANIFEST)  # the manifest exists before any work starts
    runnable = [item for item in items if item.status == "pending"]
    progress = Progress(enabled=not args.quiet)
    step = 1 if args.faces else args.batch_size
    for start in range(0, len(runnable), step):
        batch = runnable[start : start + step]
        _run_batch(batch, recipe, prior, registry, device, outdir, args, faces, progress)
        report["inputs"] = [_item_report(i) for i in items]
        write_json(report, outdir / MANIFEST)
    progress.close()

    failed = [i for i in items if i.status != "done"]
    done = len(items) - len(failed)
    print(f"{done} of {len(items)} image(s) restored into {outdir}", file=sys.stderr)
    if any(i.status == "failed" for i in items):
        return 1
    return 2 if failed else 0


def _interrupted_hint(outdir: Path) -> str:
    """`` or pass --resume ...`` when ``outdir`` holds a run that did not finish."""
    try:
        previous = json.loads((outdir / MANIFEST).read_text())
    except (OSError, ValueError):
        return ""
    inputs = previous.get("inputs", [])
    done = sum(1 for entry in inputs if entry.get("status") == "done")
    if not inputs or done == len(inputs):
        return ""
    return (
        f"; {outdir} holds an interrupted run ({done} of {len(inputs)} inputs done): pass "
        "--resume to continue it with the same arguments"
    )


def _find_companions(item: Item, args: argparse.Namespace) -> None:
    """The item's mask and reference files (a missing one refuses the item)."""
    try:
        item.mask_path = companion(args.mask, item, "mask")
        item.reference_path = companion(args.reference, item, "reference")
    except InputError as exc:
        item.status, item.error = "refused", str(exc)
        print(f"error: {exc}", file=sys.stderr)


def _refuse_inputs_among_outputs(items: list[Item], outdir: Path, args: argparse.Namespace) -> None:
    """Refuse a run that would write over one of its own inputs (even with --overwrite)."""
    planned = {
        _resolved(outdir / name): name
        for name in _planned(items, args.trajectory > 0, outdir) + [MANIFEST]
    }
    for item in items:
        for path in (item.path, item.mask_path, item.reference_path):
            if path is not None and _resolved(path) in planned:
                raise UsageError(
                    f"input {path} is also an output of this run "
                    f"({outdir / planned[_resolved(path)]}); choose another --output folder"
                )


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:  # pragma: no cover - unresolvable: compare as given
        return path.absolute()


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system holding ``folder`` accepts."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _check_output_names(item: Item, args: argparse.Namespace, limit: int) -> None:
    """Refuse an input whose output file names the file system cannot hold."""
    names = _planned([item], args.trajectory > 0)
    if args.faces:
        names.append(f"{item.name}_face00_restored.png")
    longest = max(names, key=lambda n: len(os.fsencode(n)))
    size = len(os.fsencode(longest))
    if size > limit:
        item.status = "refused"
        item.error = (
            f"input {item.path}: its output name {longest} is {size} bytes, too long for the file "
            f"system of the output folder (at most {limit}); rename the input"
        )
        print(f"error: {item.error}", file=sys.stderr)


def _run_batch(
    batch: list[Item],
    recipe: Any,
    prior: Any,
    registry: Registry,
    device: Any,
    outdir: Path,
    args: argparse.Namespace,
    faces: Any,
    progress: Progress,
) -> None:
    """Run one batch through :func:`guidestack.api.run` and write each input's outputs."""
    try:
        results = api.run(
            recipe,
            prior,
            [item.image.tensor for item in batch],
            mask=None if args.mask is None else [item.mask.tensor for item in batch],
            reference=None if args.reference is None else [item.reference.tensor for item in batch],
            seeds=[item.seed for item in batch],
            names=[item.name for item in batch],
            device=device,
            trajectory=args.trajectory,
            output_size=args.output_size,
            upsampler=args.upsampler,
            faces=faces,
            progress=progress,
            registry=registry,
        )
    except GuidestackError as exc:
        for item in batch:
            item.status, item.error = "failed", str(exc)
        print(f"error: {exc}", file=sys.stderr)
        return
    for item, result in zip(batch, results, strict=True):
        try:
            outputs = result.save(outdir, item.name, overwrite=True)
        except OutputError as exc:  # e.g. a full disk: this input fails, the others go on
            for name in result.planned_outputs(item.name):
                (outdir / name).unlink(missing_ok=True)
            item.status, item.error = "failed", str(exc)
            print(f"error: {exc}", file=sys.stderr)
            continue
        entry = dict(result.entry)
        entry.pop("name", None)
        for hint in entry.get("hints", []):
            print(f"hint: {item.path.name}: {hint}", file=sys.stderr)
        warnings = [*_file_warnings(item), *entry.pop("warnings", [])]
        item.info = {**entry, "outputs": outputs, "checksums": checksums(outdir, outputs)}
        if warnings:
            item.info["warnings"] = warnings
        item.status = "done"


def _file_warnings(item: Item) -> list[str]:
    return [w for part in (item.image, item.mask, item.reference) if part for w in part.warnings]


def _fingerprint(recipe: Any, prior: Any, args: argparse.Namespace) -> str:
    """What must be equal for a resumed run to continue the same computation."""
    key = {
        "recipe": recipe.resolved(),
        "prior": prior.describe(),
        "seed": args.seed,
        "mask": args.mask,
        "reference": args.reference,
        "trajectory": args.trajectory,
        "output_size": args.output_size,
        "upsampler": args.upsampler,
    }
    if args.faces:
        key["faces"] = faces_options(args)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished_inputs(outdir: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Inputs a previous run of the same recipe, prior and seed finished: every output it
    listed is on disk with the size and SHA-256 recorded (a damaged output is redone)."""
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
        recorded = entry.get("checksums") or {}
        if (
            entry.get("status") == "done"
            and outputs
            and set(recorded) == set(outputs)
            and checksums(outdir, outputs) == recorded
        ):
            finished[entry["name"]] = {
                k: v for k, v in entry.items() if k not in ("name", "path", "seed", "status")
            }
    return finished


def checksums(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each output, as run.json records them (a missing file has none)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError:
            continue
        out[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return out


def _item_report(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": item.name,
        "path": str(item.path),
        "seed": item.seed,
        "status": item.status,
    }
    if item.error:
        out["error"] = item.error
    if item.status != "done" and item.image is not None and _file_warnings(item):
        out["warnings"] = _file_warnings(item)
    out.update(item.info)
    return out
