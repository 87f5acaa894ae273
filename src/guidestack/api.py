"""The public Python API: a recipe on an image in a few lines.

::

    import guidestack as gs

    prior = gs.load_prior("gaussian-faces-64")
    recipe = gs.load_recipe("inpaint", set={"guidance.scale": 0.3})
    out = gs.run(recipe, prior, "face.png", mask="mask.png", seed=0)
    out.image, out.report, out.trajectory

It is the engine (:mod:`guidestack.engine`, tensors only) plus user images
(:mod:`guidestack.io`) plus the process-wide plugin registry; the command line, the web UI and
the bench are built on these functions.  A file input gets the seed ``guidestack run`` gives it
(from the run seed and its file name), so the same call and the same command give the same image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from guidestack import __version__
from guidestack.engine.context import Observation, RunContext
from guidestack.engine.device import pick_device
from guidestack.engine.errors import InputError, RecipeError, UsageError
from guidestack.engine.functional import LossFn, loss_stage
from guidestack.engine.pipeline import Crop
from guidestack.engine.prior import Prior
from guidestack.engine.prior_source import load_prior as _load_prior
from guidestack.engine.recipe import Recipe, guidance_rule_problem, recipe_requirements
from guidestack.engine.refs import measurement_side
from guidestack.engine.registry import Registry
from guidestack.engine.run import derive_seed, run_recipe
from guidestack.engine.run import preflight as _preflight
from guidestack.engine.stage import Stage
from guidestack.engine.upsampler import Upsampler
from guidestack.finish import SIZE_MODES, finish, output_side
from guidestack.io.images import (
    MAX_SIDE,
    MIN_SIDE,
    LoadedImage,
    check_same_size,
    load_input,
    to_square,
)
from guidestack.lookup import (  # the light half, re-exported (see guidestack.lookup)
    HOOK_API_VERSION,
    KINDS,
    _registry,
    explain,
    list_plugins,
    list_recipes,
    load_recipe,
    prior_facts,
    register,
    registry,
    requirements,
    run_hooks,
)
from guidestack.progress import Progress
from guidestack.result import Result, Trajectory

#: what ``upsampler = "auto"`` tries, in order
AUTO_UPSAMPLERS = ("realesrgan-x4", "bicubic")
#: what ``run`` accepts as an image (or a list of them): a path, a PIL image, an array, a tensor
ImageLike = Any


# --- priors and recipes ------------------------------------------------------------------------

__all__ = [
    "HOOK_API_VERSION",
    "KINDS",
    "check_faces_options",
    "check_output_size",
    "resolve_upsampler",
    "derive_seed",
    "explain",
    "load_prior",
    "load_recipe",
    "pick_device",
    "pipeline_hints",
    "preflight",
    "prior_facts",
    "list_plugins",
    "list_recipes",
    "register",
    "registry",
    "requirements",
    "run",
    "run_hooks",
    "run_report",
]


def load_prior(
    ref: Any = "gaussian-faces-64",
    *,
    device: torch.device | str | None = None,
    dtype: str | torch.dtype = "float32",
    registry: Registry | None = None,
    **extra: Any,
) -> Prior:
    """A prior from a registered name, a ``.pt`` file, a diffusers folder or hub id, a
    :class:`Prior`, a diffusers ``UNet2DModel`` (with ``scheduler=``), or any callable
    ``eps(x_t, t)`` with ``alphas_cumprod=`` and ``image_size=``.

    Names and paths load on ``device`` (default: the CPU); objects stay on their own device
    unless ``device`` is given.  ``dtype`` is the denoiser's compute dtype.
    """
    if isinstance(ref, str | Path) and device is None:
        device = "cpu"
    return _load_prior(ref, _registry(registry), device=device, dtype=dtype, **extra)


def preflight(
    recipe: Recipe,
    prior: Prior,
    *,
    device: torch.device | str | None = None,
    registry: Registry | None = None,
) -> None:
    """Set the recipe's stages up once without running (missing weights, a restorer that cannot
    load...), so a problem of the whole run is raised before the first input, not once per input."""
    reg = _registry(registry)
    _preflight(recipe, prior, reg, needs=recipe_requirements(recipe, reg), device=device)


# --- running -----------------------------------------------------------------------------------


@dataclass
class _Input:
    name: str
    seed: int
    image: LoadedImage
    mask: LoadedImage | None = None
    reference: LoadedImage | None = None

    @property
    def warnings(self) -> list[str]:
        return [
            w for part in (self.image, self.mask, self.reference) if part for w in part.warnings
        ]


def _as_list(value: Any, count: int | None, what: str) -> list[Any]:
    """``value`` as one entry per input: lists stay, a batched tensor splits, one thing repeats."""
    if isinstance(value, list | tuple) or isinstance(value, torch.Tensor) and value.dim() == 4:
        items = list(value)
    else:
        return [value] * (count or 1)
    if count is not None and len(items) != count:
        raise UsageError(f"{len(items)} {what}s for {count} images: give one per image, or one")
    return items


def _default_name(obj: Any, index: int, count: int) -> str:
    if isinstance(obj, str | Path):
        return Path(obj).stem
    return "input" if count == 1 else f"input{index:02d}"


def prepare_inputs(
    image: ImageLike,
    *,
    mask: Any = None,
    reference: Any = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> list[_Input]:
    """Read and check every input (one :class:`InputError` names the first bad one)."""
    images = _as_list(image, None, "image")
    count = len(images)
    masks = _as_list(mask, count, "mask")
    refs = _as_list(reference, count, "reference")
    if names is None:
        names = [_default_name(obj, i, count) for i, obj in enumerate(images)]
    if len(names) != count or len(set(names)) != count:
        raise UsageError(f"need {count} distinct names for {count} images, got {list(names)}")
    if seeds is not None and len(seeds) != count:
        raise UsageError(f"need one seed per image: {len(seeds)} seeds for {count} images")
    inputs = []
    for i, (obj, name) in enumerate(zip(images, names, strict=True)):
        loaded = load_input(obj, name=name)
        item = _Input(name, int(seeds[i]) if seeds is not None else derive_seed(seed, name), loaded)
        if masks[i] is not None:
            item.mask = load_input(masks[i], kind="mask", name=f"{name} (mask)")
            check_same_size(
                loaded.path or name, loaded, item.mask.path or f"{name} (mask)", item.mask
            )
        if refs[i] is not None:
            item.reference = load_input(refs[i], name=f"{name} (reference)")
        inputs.append(item)
    return inputs


class _Events:
    """The loop's events: progress bar, x0 frames for the trajectory, the user's callback."""

    def __init__(self, label: str, progress: Progress | None, frames: int, user: Callable | None):
        self.label, self.progress, self.count, self.user = label, progress, frames, user
        self.t: list[int] = []
        self.x0: list[torch.Tensor] = []
        self.wanted: set[int] = set()

    def __call__(self, event: str, **info: Any) -> None:
        if event == "start":
            total = int(info["total"])
            if self.progress is not None:
                self.progress.start(self.label, total)
            n = min(self.count, total)
            self.wanted = {round(k * (total - 1) / max(1, n - 1)) for k in range(n)} if n else set()
            self.t, self.x0 = [], []
        elif event in ("step", "iteration"):
            if self.progress is not None:
                self.progress.advance(info.get("postfix"))
            state = info.get("state")
            if event == "step" and info.get("index") in self.wanted and state is not None:
                self.t.append(int(info["t"]))
                self.x0.append(state.x0.detach().float().cpu())
        if self.user is not None:
            self.user(event, **info)

    def trajectory(self, k: int) -> Trajectory:
        if not self.t:
            return Trajectory([], torch.empty(0, 3, 0, 0))
        return Trajectory(list(self.t), torch.stack([x0[k] for x0 in self.x0]))


#: facts of ``ctx.report`` that the input's entry holds itself (or that are not per sample)
_RUN_LEVEL = ("grid", "seeds", "seconds", "model_calls", "start_t")


def _per_sample(
    report: dict[str, Any], k: int, n: int, skip: tuple[str, ...] = _RUN_LEVEL
) -> dict[str, Any]:
    """Sample ``k``'s share of a run report: lists with one entry per sample are split (the
    convention stages follow for per-sample values), nested tables likewise."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            out[key] = _per_sample(value, k, n, ())
        elif isinstance(value, list) and len(value) == n and n > 1:
            out[key] = value[k]
        else:
            out[key] = value
    return out


def run_report(
    recipe: Recipe, prior: Prior, device: torch.device | str, seed: int | None
) -> dict[str, Any]:
    """The run-level part of run.json (the CLI adds its own fields and every input's entry)."""
    return {
        "guidestack": __version__,
        "recipe_source": recipe.source,
        "recipe": recipe.resolved(),
        "prior": prior.describe(),
        "device": str(device),
        "seed": seed,
    }


def _entry(item: _Input) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": item.name, "seed": item.seed, "status": "done"}
    if item.image.path is not None:
        entry["path"] = str(item.image.path)
    if item.warnings:
        entry["warnings"] = item.warnings
    return entry


def _extra_stages(loss: LossFn | Stage | Sequence[Any] | None, recipe: Recipe, registry: Registry):
    if loss is None:
        return []
    losses = list(loss) if isinstance(loss, list | tuple) else [loss]
    stages = [loss_stage(fn, i) for i, fn in enumerate(losses)]
    optimises = any("optimise" in registry.get("stage", s.use).hooks for s in recipe.stages)
    if not optimises:
        problem = guidance_rule_problem(recipe.sampler, recipe.guidance)
        if recipe.guidance.scale == 0:
            problem = ("guidance.scale", "is 0, so a loss given to run() would have no effect")
        if problem is not None:
            raise RecipeError(recipe.source, [problem])
    return stages


def run(
    recipe: Recipe | str | Path | Mapping[str, Any],
    prior: Prior | Any,
    image: ImageLike,
    *,
    mask: Any = None,
    reference: Any = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    loss: LossFn | Stage | Sequence[Any] | None = None,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    trajectory: int = 0,
    output_size: str | int = "input",
    upsampler: str | None = None,
    faces: bool | Mapping[str, Any] = False,
    progress: bool | Progress = False,
    callback: Callable[..., None] | None = None,
    registry: Registry | None = None,
) -> Result | list[Result]:
    """Restore ``image`` with ``recipe`` on ``prior``.

    ``image`` is a path, a PIL image, a numpy array, a tensor ``[3, H, W]`` in [-1, 1], or a list
    of them (or a ``[N, 3, H, W]`` batch): a list gives a list of :class:`Result`, one per input.
    ``mask`` (white/1 = missing) and ``reference`` are one for all inputs or one per input.

    Seeds: ``seeds`` gives each input's seed; otherwise it derives from ``seed`` and the input's
    name (its file stem, or ``input``/``inputNN``), as ``guidestack run`` does, so results do not
    depend on batching.  ``loss`` adds guidance losses ``loss(x0, obs) -> [N]`` to the recipe's
    (with the recipe's update rule).  The run goes on the prior's device unless ``device`` says
    otherwise; ``batch_size`` splits the inputs (default: one batch).  ``trajectory=N`` keeps N
    x0 predictions per input.

    ``output_size`` is ``"input"`` (the input's own resolution, default), ``"prior"`` or a side
    in pixels; the recipe's ``[output]`` table says what is kept from the full-resolution input
    (guidestack.finish) and ``upsampler`` overrides its upsampler.  ``faces=True`` (or a dict of
    the ``faces`` pipeline's options: ``min_face``, ``threshold``, ``upscale``,
    ``background_upsampler``) restores every face of unaligned photos.  ``callback(event, **info)`` sees the loop's events (``start``, ``step``,
    ``iteration``).
    """
    reg = _registry(registry)
    single = not isinstance(image, list | tuple) and not (
        isinstance(image, torch.Tensor) and image.dim() == 4 and image.shape[0] > 1
    )
    prior = prior if isinstance(prior, Prior) else load_prior(prior, registry=reg)
    recipe = load_recipe(recipe, registry=reg).for_prior(prior, reg)
    needs = recipe_requirements(recipe, reg)
    pipeline = _pipeline(faces, reg)
    if pipeline is not None:
        check_faces_options({} if faces is True else dict(faces), registry=reg)
    if pipeline is not None and mask is not None:
        raise UsageError("a mask cannot be combined with faces: masks are given per aligned face")
    if "mask" in needs and mask is None:
        raise UsageError(f"recipe {recipe.source} needs a mask (white = missing): pass mask=")
    if "reference" in needs and reference is None:
        raise UsageError(f"recipe {recipe.source} needs a reference image: pass reference=")
    extra = _extra_stages(loss, recipe, reg)
    check_output_size(output_size)
    upsample = resolve_upsampler(upsampler or recipe.output.upsampler, registry=reg)
    inputs = prepare_inputs(
        image, mask=mask, reference=reference, seed=seed, seeds=seeds, names=names
    )
    device = torch.device(device) if device is not None else prior.device
    bar = progress if isinstance(progress, Progress) else (Progress() if progress else None)
    measured = measurement_side(recipe.stages, reg, prior.image_size, recipe.source)
    context = _RunSettings(
        recipe,
        prior,
        reg,
        device,
        extra,
        trajectory,
        bar,
        callback,
        output_size,
        upsample,
        measured,
    )
    head = run_report(recipe, prior, device, seed if seeds is None else None)
    results: list[Result] = []
    try:
        if pipeline is not None:
            for item in inputs:
                results.append(_run_pipeline(context, pipeline, item, head))
        else:
            step = batch_size or len(inputs)
            if step < 1:
                raise UsageError("batch_size must be at least 1")
            for start in range(0, len(inputs), step):
                results += _run_batch(context, inputs[start : start + step], head)
    finally:
        if bar is not None and not isinstance(progress, Progress):
            bar.close()
    return results[0] if single else results


@dataclass
class _RunSettings:
    recipe: Recipe
    prior: Prior
    registry: Registry
    device: torch.device
    extra: list[Stage]
    trajectory: int
    progress: Progress | None
    callback: Callable[..., None] | None
    output_size: str | int
    upsampler: Upsampler
    #: the side the recipe's operator reads y at, when not the prior's (super-resolution)
    measured: int | None = None

    def events(self, label: str) -> _Events:
        return _Events(label, self.progress, self.trajectory, self.callback)

    def execute(
        self, obs: Observation, seeds: list[int], events: _Events
    ) -> tuple[torch.Tensor, RunContext]:
        result, ctx = run_recipe(
            self.recipe,
            self.prior,
            obs,
            seeds,
            self.registry,
            device=self.device,
            callback=events,
            extra_stages=self.extra,
        )
        return result.image.detach().float().cpu(), ctx


def resolve_upsampler(name: str, *, registry: Registry | None = None) -> Upsampler:
    """The registered upsampler ``name``; ``auto`` is Real-ESRGAN x4 where it can run, else
    bicubic.  An unknown or unavailable one is a :class:`UsageError` saying what to do."""
    reg = _registry(registry)
    if name == "auto":
        for candidate in AUTO_UPSAMPLERS:
            entry = reg.get("upsampler", candidate)
            if entry is not None and entry.obj.unavailable() is None:
                return entry.obj
        raise UsageError(f"no upsampler of {', '.join(AUTO_UPSAMPLERS)} is available")
    entry = reg.get("upsampler", name)
    if entry is None:
        known = ", ".join(["auto", *reg.names("upsampler")])
        raise UsageError(f"unknown upsampler '{name}'; one of {known}")
    why = entry.obj.unavailable()
    if why is not None:
        raise UsageError(f"upsampler '{name}' cannot run here: {why}")
    return entry.obj


def pipeline_hints(photo: torch.Tensor, *, registry: Registry | None = None) -> list[str]:
    """What the registered pipelines suggest for ``photo`` run without them (e.g. several faces:
    use ``faces``)."""
    reg = _registry(registry)
    hints = []
    for name in reg.names("pipeline"):
        entry = reg.get("pipeline", name)
        hint = entry.obj(entry.options()).hint(photo)
        if hint:
            hints.append(hint)
    return hints


def check_output_size(output_size: str | int) -> None:
    """``"input"``, ``"prior"`` or a side in pixels within the input limits."""
    if isinstance(output_size, str) and output_size in SIZE_MODES:
        return
    number = isinstance(output_size, int) and not isinstance(output_size, bool)
    if number and MIN_SIDE <= output_size <= MAX_SIDE:
        return
    raise UsageError(
        f"output size {output_size!r}: use 'input', 'prior' or a side of {MIN_SIDE} to "
        f"{MAX_SIDE} pixels"
    )


def check_faces_options(options: Mapping[str, Any], *, registry: Registry | None = None) -> None:
    """Refuse bad ``faces`` options (``UsageError``) before any input runs."""
    reg = _registry(registry)
    pipeline = _pipeline(options, reg)
    background = getattr(pipeline.options, "background_upsampler", None)
    if background is not None:
        resolve_upsampler(background, registry=reg)


def _pipeline(faces: bool | Mapping[str, Any], registry: Registry) -> Any:
    if faces is False or faces is None:
        return None
    entry = registry.get("pipeline", "faces")
    if entry is None:
        raise UsageError("no 'faces' pipeline is installed (is the built-in plugin blocked?)")
    options = {} if faces is True else dict(faces)
    try:
        return entry.obj(entry.options.model_validate(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"faces options: {problems}") from exc


def _square(item: _Input, size: int) -> tuple[torch.Tensor, Any, torch.Tensor | None, Any]:
    image, placement = to_square(item.image.tensor, size)
    mask = None if item.mask is None else to_square(item.mask.tensor, size, kind="mask")[0]
    ref = None if item.reference is None else to_square(item.reference.tensor, size)[0]
    return image, placement, mask, ref


def _measurements(s: _RunSettings, batch: list[_Input]) -> torch.Tensor | None:
    """y at the side the recipe's operator reads it (a 16x16 photo stays 16x16), or ``None``."""
    if s.measured is None:
        return None
    return torch.stack([to_square(item.image.tensor, s.measured)[0] for item in batch])


def _run_batch(s: _RunSettings, batch: list[_Input], head: dict[str, Any]) -> list[Result]:
    size = s.prior.image_size
    squared = [_square(item, size) for item in batch]
    upscale = 1 if s.measured is None else max(1, round(size / s.measured))
    masks = [m for _, _, m, _ in squared if m is not None]
    refs = [r for _, _, _, r in squared if r is not None]
    if 0 < len(masks) < len(batch) or 0 < len(refs) < len(batch):
        raise InputError("in one batch, either every image has a mask/reference or none has")
    obs = Observation(
        image=torch.stack([img for img, _, _, _ in squared]),
        mask=torch.stack(masks) if masks else None,
        reference=torch.stack(refs) if refs else None,
        meta=[{"name": item.name} for item in batch],
        measurement=_measurements(s, batch),
    )
    label = batch[0].name if len(batch) == 1 else f"{batch[0].name} (+{len(batch) - 1})"
    events = s.events(label)
    started = time.perf_counter()
    output, ctx = s.execute(obs, [item.seed for item in batch], events)
    seconds = (time.perf_counter() - started) / len(batch)
    results = []
    output_config = s.recipe.output
    for k, (item, (_, placement, _, ref)) in enumerate(zip(batch, squared, strict=True)):
        finished = finish(
            output[k],
            item.image.tensor,
            placement,
            side=output_side(s.output_size, placement, size, upscale),
            keep=output_config.keep,
            upsampler=s.upsampler,
            feather=output_config.feather,
            mask=None if item.mask is None else item.mask.tensor,
        )
        entry = _entry(item)
        hints = pipeline_hints(item.image.tensor, registry=s.registry)
        if hints:
            entry["hints"] = hints
        entry.update(
            placement=placement.to_dict(),
            output=finished.facts,
            seconds=seconds,
            model_calls=ctx.model_calls,
            start_t=ctx.report.get("start_t"),
            stages=_per_sample(ctx.report, k, len(batch)),
        )
        results.append(
            Result(
                name=item.name,
                image=finished.image,
                report={**head, "inputs": [entry]},
                input=finished.input,
                mask=finished.mask,
                reference=ref,
                trajectory=events.trajectory(k),
                restored=output[k],
            )
        )
    return results


def _run_pipeline(s: _RunSettings, pipeline: Any, item: _Input, head: dict[str, Any]) -> Result:
    size = s.prior.image_size
    events = s.events(item.name)
    runs: list[tuple[RunContext, list[int]]] = []

    def restore(crops: torch.Tensor) -> torch.Tensor:
        n = crops.shape[0]
        reference = None
        if item.reference is not None:
            reference = to_square(item.reference.tensor, size)[0][None].expand(n, -1, -1, -1)
        obs = Observation(
            image=crops,
            reference=reference,
            meta=[{"name": f"{item.name}:face{i:02d}"} for i in range(n)],
        )
        seeds = [derive_seed(item.seed, f"face{i:02d}") for i in range(n)]
        output, ctx = s.execute(obs, seeds, events)
        runs.append((ctx, seeds))
        return output

    started = time.perf_counter()
    found = pipeline.run(
        item.image.tensor,
        restore,
        size,
        s.upsampler,
        lambda name: resolve_upsampler(name, registry=s.registry),
    )
    entry = _entry(item)
    ctx, seeds = runs[0] if runs else (None, [])
    if found.warnings:
        entry["warnings"] = [*entry.get("warnings", []), *found.warnings]
    entry.update(
        seconds=time.perf_counter() - started,
        model_calls=ctx.model_calls if ctx is not None else 0,
        face_seeds=seeds,
        **found.report,
    )
    crops: list[Crop] = list(found.crops)
    return Result(
        name=item.name,
        image=found.image.detach().float().cpu(),
        report={**head, "faces": pipeline.options.model_dump(), "inputs": [entry]},
        input=item.image.tensor,
        reference=None if item.reference is None else item.reference.tensor,
        trajectory=events.trajectory(0),
        crops=crops,
    )
