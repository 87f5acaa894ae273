"""``guidestack run``: restore every input with a recipe, safely, through the public API.

Nothing is written until the recipe, the prior and the output folder are known to be usable;
existing outputs are never replaced without ``--overwrite``; every file is written atomically;
an input that cannot be read or fails is reported and the others still run; ``run.json`` is
rewritten as inputs finish so ``--resume`` can continue an interrupted run.

One process is a launch of size 1: under torchrun, ``accelerate launch`` or srun the same
code runs in every process, each claiming inputs through files in the output folder
(:mod:`guidestack.io.claims`, :mod:`guidestack.cli.distributed`, docs/distributed.md).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidestack import (
    GuidestackError,
    InputError,
    OutputError,
    Registry,
    UsageError,
    api,
    distributed,
)
from guidestack.distributed import World
from guidestack.io.claims import (
    STATE_DIR,
    Claim,
    Journal,
    JournalReader,
    WorkQueue,
    held_locks,
    hold_lock,
    holder_info,
    wait_unlocked,
)
from guidestack.io.images import (
    IMAGE_SUFFIXES,
    LoadedImage,
    check_same_size,
    expand_inputs,
    read_image,
)
from guidestack.io.outputs import folder_lock, prepare_output_dir, write_json
from guidestack.progress import Progress

from .distributed import Launch, RunProgress, reporter, sigterm_as_interrupt

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
    rank: int | None = None  # the process that ran it
    attempt: int = 1


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


def _check_arguments(args: argparse.Namespace) -> None:
    """Refusals that depend on the arguments only (every process reaches the same)."""
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


@dataclass
class Setup:
    """A run checked and ready: everything each process needs before it takes inputs."""

    args: argparse.Namespace
    registry: Registry
    world: World
    items: list[Item]
    recipe: Any
    prior: Any
    device: Any
    faces: Any
    outdir: Path
    say: Callable[[str], None]
    manifest: Manifest | None = None  # rank 0's


def run_command(args: argparse.Namespace, registry: Registry) -> int:
    _check_arguments(args)
    world = distributed.world()
    outdir = Path(args.output)
    with sigterm_as_interrupt(), Launch(world, outdir) as launch:
        setup = launch.together(lambda: _prepare(args, registry, world))
        with contextlib.ExitStack() as held:
            gate = launch.from_first(lambda: _open_run(setup, held))
            launch.together(lambda: _join(setup, gate, held))
            launch.close()  # from here on the processes share files only
            return _work(setup, gate, held)


def _prepare(args: argparse.Namespace, registry: Registry, world: World) -> Setup:
    """Every process: inputs, seeds, recipe, prior and device, checked before anything runs."""
    say = reporter(world)
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
    # several processes: cuda:LOCAL_RANK where CUDA exists, unless --device says otherwise
    device = api.pick_device(args.device) if args.device or world.size == 1 else world.device
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
    # up-front refusals are reported once, by the first process (every process finds them)
    first = say if world.rank == 0 else (lambda message: None)
    for item in items:
        _find_companions(item, args, first)
    _refuse_inputs_among_outputs(items, outdir, args)
    limit = name_max(outdir)
    for item in items:
        if item.status == "pending":
            _check_output_names(item, args, limit, first)
    return Setup(args, registry, world, items, recipe, prior, device, faces, outdir, say)


@dataclass
class Gate:
    """What the first process decided for the whole launch, handed to the others."""

    token: str  # names this launch's state folder
    fingerprint: str
    finished: list[str]  # kept from the run being resumed
    shares: list[list[str]]  # the inputs to run, one share per process

    def state(self, outdir: Path) -> Path:
        return outdir / STATE_DIR / self.token


def _open_run(setup: Setup, held: contextlib.ExitStack) -> Gate:
    """The first process: take the output folder, resume, refuse overwrites, write run.json."""
    args, outdir, items = setup.args, setup.outdir, setup.items
    warn = lambda message: setup.say(f"warning: {message}")  # noqa: E731
    held.enter_context(folder_lock(outdir, warn=warn))
    _refuse_live_processes(outdir)
    fingerprint = _fingerprint(setup.recipe, setup.prior, args)
    resume = args.resume and (outdir / MANIFEST).is_file()
    if args.resume and not resume:
        setup.say(f"--resume: no {MANIFEST} in {outdir}, so this is a new run")
    finished = _finished_inputs(outdir, fingerprint) if resume else {}
    for item in items:
        if item.name in finished and item.status == "pending":
            item.status, item.info = "done", {**finished[item.name], "resumed": True}
    todo = [item for item in items if item.status == "pending"]
    planned = _planned(todo, args.trajectory > 0, outdir) + ([] if resume else [MANIFEST])
    try:
        prepare_output_dir(outdir, planned, args.overwrite or resume)
    except OutputError as exc:
        raise OutputError(f"{exc}{_interrupted_hint(outdir)}") from None
    _remove_temporaries(outdir)

    token = secrets.token_hex(8)
    gate = Gate(token, fingerprint, [i.name for i in items if i.status == "done"], [])
    state = gate.state(outdir)
    try:
        state.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {state}: {exc.strerror or exc}") from exc
    head = {
        **api.run_report(setup.recipe, setup.prior, setup.device, args.seed),
        "fingerprint": fingerprint,
    }
    if setup.world.size > 1:
        head["processes"] = setup.world.size
    setup.manifest = Manifest(outdir / MANIFEST, head, items, state, fingerprint)
    setup.manifest.write(force=True)  # the manifest exists before any work starts
    for old in (outdir / STATE_DIR).iterdir():  # what a resumed run left is in run.json now
        if old.name != token:
            shutil.rmtree(old, ignore_errors=True)
    cost = _cost if args.faces else None  # without --faces every input costs the same
    by_name = {item.name: item for item in todo}
    gate.shares = distributed.plan(
        [item.name for item in todo],
        setup.world.size,
        None if cost is None else (lambda name: cost(by_name[name])),
    )
    return gate


def _cost(item: Item) -> float:
    """A cheap estimate of an input's cost for --faces runs: its file size (bigger scans hold
    more, and larger, faces); never opens the file, so pipes are read once, by their runner."""
    try:
        return float(item.path.stat().st_size) if item.path.is_file() else 0.0
    except OSError:
        return 0.0


def _refuse_live_processes(outdir: Path) -> None:
    """Another launch whose first process is gone may still have processes writing here."""
    live = held_locks(sorted((outdir / STATE_DIR).glob("*/rank-*.lock")))
    if live:
        who = live[0]
        raise OutputError(
            f"output folder {outdir} is in use by another guidestack run (process "
            f"{who.get('rank', '?')}: pid {who.get('pid', '?')} on {who.get('host', '?')}, "
            f"started {who.get('started', '?')}); wait for it to end or choose another --output"
        )


def _remove_temporaries(outdir: Path) -> None:
    """Temporary files of a run that was killed while writing (this run holds the folder)."""
    for folder in (outdir, outdir / "faces"):
        for tmp in folder.glob(".gs-*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _join(setup: Setup, gate: Gate, held: contextlib.ExitStack) -> None:
    """Every process: mark what was resumed; the others take a lock of their own, which keeps
    another launch out of the folder as long as they live, even if the first process dies."""
    finished = set(gate.finished)
    for item in setup.items:
        if item.name in finished and item.status == "pending":
            item.status = "done"
    state = gate.state(setup.outdir)
    if setup.world.rank > 0:
        if not state.is_dir():
            raise UsageError(
                f"process {setup.world.rank} does not see {state}, which process 0 created: "
                "every process of a run must see the same output folder (a shared file system)"
            )
        info = holder_info(rank=setup.world.rank)
        held.callback(os.close, hold_lock(state / f"rank-{setup.world.rank}.lock", info))


def _work(setup: Setup, gate: Gate, held: contextlib.ExitStack) -> int:
    """Claim inputs and run them until none is left; the first process then waits for the
    others, runs what a process that died left, and writes the final run.json."""
    args, world, outdir, manifest = setup.args, setup.world, setup.outdir, setup.manifest
    state = gate.state(outdir)
    queue = WorkQueue(state, distributed.visiting_order(gate.shares, world.rank))
    held.callback(queue.release)
    journal = Journal(
        state / f"rank-{world.rank}.jsonl", {"fingerprint": gate.fingerprint, "rank": world.rank}
    )
    held.callback(journal.close)
    total = sum(len(share) for share in gate.shares)
    if world.size == 1:
        progress: Progress = Progress(enabled=not args.quiet)
    elif manifest is not None:
        progress = RunProgress(not args.quiet, total, manifest.absorb)
    else:
        progress = Progress(enabled=False)
    by_name = {item.name: item for item in setup.items}
    step = 1 if args.faces else args.batch_size

    def drain() -> None:
        while claims := queue.claim(step):
            _run_claims(claims, by_name, setup, queue, journal, progress)
            if manifest is not None:
                manifest.absorb()
                manifest.write()

    drain()
    if manifest is None:
        # not the first process: its failures are in run.json and in the first process's exit
        # code (a launcher such as torchrun stops every process when one exits non-zero)
        return 0

    def tick() -> None:
        if isinstance(progress, RunProgress):
            progress.refresh()
        manifest.absorb()
        manifest.write()

    for rank in range(1, world.size):
        wait_unlocked(state / f"rank-{rank}.lock", tick=tick)
    drain()  # what processes that died left: they hold nothing now
    manifest.absorb()
    manifest.write(force=True)
    if isinstance(progress, RunProgress):
        progress.finish()
    progress.close()
    shutil.rmtree(outdir / STATE_DIR, ignore_errors=True)
    entries = manifest.entries()
    done = sum(1 for entry in entries if entry["status"] == "done")
    by = f" by {world.size} processes" if world.size > 1 else ""
    setup.say(f"{done} of {len(entries)} image(s) restored into {outdir}{by}")
    return _exit_code(entries)


def _exit_code(entries: list[dict[str, Any]]) -> int:
    """1 if an input failed while running, 2 if one was refused, else 0."""
    status = [entry["status"] for entry in entries]
    if "failed" in status:
        return 1
    return 2 if any(s != "done" for s in status) else 0


def _run_claims(
    claims: list[Claim],
    by_name: dict[str, Item],
    setup: Setup,
    queue: WorkQueue,
    journal: Journal,
    progress: Progress,
) -> None:
    """Read the claimed inputs, run them as one batch, record each, release the claims."""
    args = setup.args
    batch = []
    for claim in claims:
        item = by_name[claim.name]
        item.rank, item.attempt = setup.world.rank, claim.attempt
        if claim.given_up:
            item.status = "failed"
            item.error = (
                f"input {item.path}: the process running it died {claim.attempt - 1} times "
                "(killed, or out of memory?); not tried again"
            )
            setup.say(f"error: {item.error}")
            continue
        try:
            load_item(item, args.mask, args.reference)
        except InputError as exc:
            item.status, item.error = "refused", str(exc)
            setup.say(f"error: {exc}")
            continue
        batch.append(item)
    if batch:
        _run_batch(batch, setup, progress)
    for claim in claims:
        item = by_name[claim.name]
        record = _item_report(item)
        if setup.world.size > 1:
            record["rank"] = item.rank
        if claim.attempt > 1:
            record["attempt"] = claim.attempt
        journal.append(record)
        queue.finish(claim, item.status)
        item.image = item.mask = item.reference = None  # 20,000 photos do not fit in memory


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


class Manifest:
    """run.json, kept by the first process: the entries of every input, updated from the
    journals of all processes; rewritten when due (after each batch for small runs, at most
    about 5% of the time for large ones) and at the end."""

    def __init__(self, path: Path, head: dict[str, Any], items: list[Item], state: Path, key: str):
        self.path, self.head = path, head
        self.order = [item.name for item in items]
        self.by_name = {item.name: _item_report(item) for item in items}
        self.reader = JournalReader([state], {"fingerprint": key})
        self.recorded: set[str] = set()
        self.last, self.cost = 0.0, 0.0

    def absorb(self) -> int:
        """Take in what the processes recorded since the last call; how many inputs of this
        launch are recorded."""
        for record in self.reader.read():
            name = record.get("name")
            if name in self.by_name:
                self.by_name[name] = record
                self.recorded.add(name)
        return len(self.recorded)

    def entries(self) -> list[dict[str, Any]]:
        return [self.by_name[name] for name in self.order]

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 20 * self.cost:
            return
        write_json({**self.head, "inputs": self.entries()}, self.path)
        self.last = time.monotonic()
        self.cost = self.last - now


def _find_companions(item: Item, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """The item's mask and reference files (a missing one refuses the item)."""
    try:
        item.mask_path = companion(args.mask, item, "mask")
        item.reference_path = companion(args.reference, item, "reference")
    except InputError as exc:
        item.status, item.error = "refused", str(exc)
        say(f"error: {exc}")


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


def _check_output_names(
    item: Item, args: argparse.Namespace, limit: int, say: Callable[[str], None]
) -> None:
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
        say(f"error: {item.error}")


def _run_batch(batch: list[Item], setup: Setup, progress: Progress) -> None:
    """Run one batch through :func:`guidestack.api.run` and write each input's outputs."""
    args, outdir = setup.args, setup.outdir
    try:
        results = api.run(
            setup.recipe,
            setup.prior,
            [item.image.tensor for item in batch],
            mask=None if args.mask is None else [item.mask.tensor for item in batch],
            reference=None if args.reference is None else [item.reference.tensor for item in batch],
            seeds=[item.seed for item in batch],
            names=[item.name for item in batch],
            device=setup.device,
            trajectory=args.trajectory,
            output_size=args.output_size,
            upsampler=args.upsampler,
            faces=setup.faces,
            progress=progress,
            registry=setup.registry,
        )
    except GuidestackError as exc:
        for item in batch:
            item.status, item.error = "failed", str(exc)
        setup.say(f"error: {exc}")
        return
    for item, result in zip(batch, results, strict=True):
        try:
            outputs = result.save(outdir, item.name, overwrite=True)
        except OutputError as exc:  # e.g. a full disk: this input fails, the others go on
            for name in result.planned_outputs(item.name):
                (outdir / name).unlink(missing_ok=True)
            item.status, item.error = "failed", str(exc)
            setup.say(f"error: {exc}")
            continue
        entry = dict(result.entry)
        entry.pop("name", None)
        for hint in entry.get("hints", []):
            setup.say(f"hint: {item.path.name}: {hint}")
        found = entry.pop("warnings", [])  # the run's own (e.g. a face blurrier than it was)
        for warning in found:
            setup.say(f"warning: {item.path.name}: {warning}")
        warnings = [*_file_warnings(item), *found]
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
    listed is on disk with the size and SHA-256 recorded (a damaged output is redone).  What
    it recorded is in run.json and, for processes that finished inputs after the last
    run.json was written (or whose first process died), in their journals."""
    manifest = outdir / MANIFEST
    try:
        previous = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--resume: cannot read {manifest}: {exc}") from exc
    if previous.get("fingerprint") != fingerprint:
        raise UsageError(
            f"--resume: {outdir} holds a run with another recipe, prior, seed, mask or reference; "
            "resume with the same arguments, or choose another output folder"
        )
    journals = JournalReader(
        sorted(p for p in (outdir / STATE_DIR).glob("*") if p.is_dir()),
        {"fingerprint": fingerprint},
    )
    finished = {}
    for entry in [*previous.get("inputs", []), *journals.read()]:
        outputs = entry.get("outputs", [])
        recorded = entry.get("checksums") or {}
        if (
            entry.get("name") not in finished
            and entry.get("status") == "done"
            and outputs
            and set(recorded) == set(outputs)
            and checksums(outdir, outputs) == recorded
        ):
            finished[entry["name"]] = {k: v for k, v in entry.items() if k not in _RUN_FACTS}
    return finished


#: what an entry says about the run that made it, not about the input's result
_RUN_FACTS = ("name", "path", "seed", "status", "rank", "attempt", "resumed")


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
