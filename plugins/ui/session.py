"""What the UI does, without Gradio: edit a recipe dict, describe stage options as controls,
save TOML, and run a recipe on uploaded files exactly as ``guidestack run`` would.

Kept free of Gradio so it is testable on its own and so the UI cannot grow logic the CLI lacks:
the run goes through the same public API as the CLI (:func:`guidestack.api.run`, seeds from the
file name, :meth:`guidestack.result.Result.save`), so a recipe saved here re-runs with the CLI
to the same image.
"""

from __future__ import annotations

import copy
import re
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w
from annotated_types import Ge, Gt, Le, Lt

from guidestack import GuidestackError, RecipeError, Registry, UsageError, __version__, api
from guidestack.io.images import declared_size, read_bytes, read_image
from guidestack.io.outputs import save_pil, tensor_to_pil, write_json, write_text

#: largest upload the UI decodes (the engine's own limit is far higher; a shared server is not)
MAX_UPLOAD_PIXELS = 4096 * 4096
SKIPPED_FIELDS = ("use", "id")


class Cancelled(GuidestackError):
    """The user pressed cancel; raised from the run callback so sampling stops at the next step."""


# --- recipes as editable dicts ----------------------------------------------------------------


def recipe_for_prior(name: str, registry: Registry, prior_name: str, prior_kind: str) -> dict:
    """The raw recipe ``name`` specialised for a prior: ``extends`` merged, ``per_prior`` applied,
    ``[example]`` dropped (its paths are relative to the recipe's folder), ``prior.name`` set.

    Saved as TOML, this dict runs the same with ``guidestack run`` for that prior (no per-prior
    table is left to apply a second time)."""
    prior = types.SimpleNamespace(name=prior_name, kind=prior_kind)  # what per_prior keys on
    out = copy.deepcopy(api.load_recipe(name, prior=prior, registry=registry).raw)
    out.pop("example", None)
    out.setdefault("prior", {})["name"] = prior_name
    return out


def problems_of(raw: dict, registry: Registry) -> list[tuple[str, str]]:
    """Every validation problem of ``raw`` with its path (empty when it is valid)."""
    try:
        api.load_recipe(copy.deepcopy(raw), registry=registry)
    except RecipeError as exc:
        return list(exc.problems)
    return []


def to_toml(raw: dict, header: str = "") -> str:
    """The recipe dict as TOML text (``None`` values mean "use the default" and are left out)."""
    body = tomli_w.dumps(_drop_none(raw))
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + body


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_drop_none(v) for v in obj]
    return obj


def add_stage(raw: dict, use: str) -> None:
    raw.setdefault("stage", []).append({"use": use})


def remove_stage(raw: dict, index: int) -> None:
    del raw.setdefault("stage", [])[index]


def move_stage(raw: dict, index: int, delta: int) -> None:
    stages = raw.setdefault("stage", [])
    j = index + delta
    if 0 <= index < len(stages) and 0 <= j < len(stages):
        stages[index], stages[j] = stages[j], stages[index]


# --- stage options as controls ----------------------------------------------------------------


@dataclass
class Control:
    """One UI control for one options field, read from the pydantic model."""

    name: str
    kind: Literal["bool", "int", "float", "choice", "text", "toml"]
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] = field(default_factory=list)
    optional: bool = False


def controls_for(model: type) -> list[Control]:
    """Controls for every field of an options model (``use``/``id`` excluded): the type picks
    the widget, ``ge``/``le`` the bounds, ``description`` the help text."""
    out = []
    for name, info in model.model_fields.items():
        if name in SKIPPED_FIELDS:
            continue
        ann, optional = _strip_optional(info.annotation)
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        lo = hi = None
        for meta in info.metadata:
            if isinstance(meta, Ge | Gt):
                lo = meta.ge if isinstance(meta, Ge) else meta.gt
            if isinstance(meta, Le | Lt):
                hi = meta.le if isinstance(meta, Le) else meta.lt
        help_text = info.description or ""
        if ann is bool:
            kind = "bool"
        elif ann is int:
            kind = "int"
        elif ann is float:
            kind = "float"
        elif typing.get_origin(ann) is Literal:
            kind = "choice"
        elif ann is str:
            kind = "text"
        else:
            kind = "toml"
        choices = list(typing.get_args(ann)) if kind == "choice" else []
        if kind == "toml" and default is not None:
            default = _jsonish(default)
        out.append(Control(name, kind, default, help_text, lo, hi, choices, optional))
    return out


def _strip_optional(ann: Any) -> tuple[Any, bool]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(ann))
    return ann, False


def _jsonish(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, tuple):
        return list(value)
    return value


def toml_value(value: Any) -> str:
    """A value as the right-hand side of a TOML assignment (the text shown in a "toml" control)."""
    if value is None:
        return ""
    return tomli_w.dumps({"v": _jsonish(value)}).strip()[len("v = ") :]


def parse_toml_value(text: str) -> Any:
    """Inverse of :func:`toml_value`; empty text means "unset" (``None``)."""
    import tomllib

    text = text.strip()
    if not text:
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_option(raw: dict, section: str | int, name: str, value: Any) -> None:
    """Set ``[section].name`` (a table name, or a stage index); ``None`` removes the key."""
    table = (
        raw.setdefault("stage", [])[section]
        if isinstance(section, int)
        else raw.setdefault(section, {})
    )
    if value is None:
        table.pop(name, None)
    else:
        table[name] = value


# --- running ----------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_stem(filename: str | None, fallback: str = "input") -> str:
    """A file stem usable as an output name (the CLI derives the seed from it)."""
    stem = Path(filename or "").stem
    stem = _SAFE.sub("_", stem).strip("._")
    return stem[:80] or fallback


@dataclass
class RunFiles:
    image: Path
    mask: Path | None = None
    reference: Path | None = None
    name: str = "input"


@dataclass
class FacesOptions:
    """``--faces`` and its options (``None`` = the CLI's default)."""

    min_face: float | None = None
    threshold: float | None = None
    upscale: int = 1

    def options(self) -> dict[str, Any]:
        """The ``faces`` pipeline's options (unset ones keep the pipeline's defaults)."""
        given = {"min_face": self.min_face, "threshold": self.threshold, "upscale": self.upscale}
        return {k: v for k, v in given.items() if v is not None}

    def cli(self) -> list[str]:
        defaults = faces_defaults()
        out = ["--faces"]
        if self.min_face is not None and self.min_face != defaults["min_face"]:
            out.append(f"--min-face {self.min_face:g}")
        if self.threshold is not None and self.threshold != defaults["threshold"]:
            out.append(f"--face-threshold {self.threshold:g}")
        if self.upscale != 1:
            out.append(f"--upscale {self.upscale}")
        return out


def faces_defaults(registry: Registry | None = None) -> dict[str, Any]:
    """The ``faces`` pipeline's option defaults, read from its options model."""
    entry = (registry or api.registry()).get("pipeline", "faces")
    if entry is None:
        raise UsageError("no 'faces' pipeline is installed")
    return entry.options().model_dump()


@dataclass
class RunOutcome:
    folder: Path
    output: Path
    compare: Path
    manifest: Path
    recipe_toml: Path
    cli: str
    files: list[Path]
    detected: Path | None = None  # --faces: the input with each detected face boxed
    faces: list[Path] = field(default_factory=list)  # --faces: each restored face
    warnings: list[str] = field(default_factory=list)


class PriorCache:
    """Loaded priors by name, so a second run does not reload weights."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._priors: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str, dtype: str = "float32"):
        with self._lock:
            key = (name, dtype)
            if key not in self._priors:
                if self.registry.get("prior", name) is None:  # no paths or hub ids from a browser
                    raise UsageError(f"unknown prior '{name}': pick one of the registered priors")
                self._priors[key] = api.load_prior(
                    name, device="cpu", dtype=dtype, registry=self.registry
                )
            return self._priors[key]


def refuse_paths(raw: dict) -> None:
    """Refuse recipe values that look like server-side paths (``/``, ``\\``, ``~``, ``..``):
    a browser user may pick registered plugins and numbers, never files on the server."""
    found = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str) and (
            "/" in value or "\\" in value or value.startswith("~") or ".." in value
        ):
            found.append(where)

    walk({k: v for k, v in raw.items() if k != "description"}, "")
    if found:
        raise UsageError(
            f"file paths are not accepted from the browser ({', '.join(found)}); "
            "use registered names, or run the recipe with the command line"
        )


def check_upload(path: Path, what: str) -> None:
    """Refuse images larger than :data:`MAX_UPLOAD_PIXELS` from the size their header declares,
    before anything is decoded (a small file may declare a huge image)."""
    size = declared_size(read_bytes(path, what))
    if size is None:  # not an image: read_image says why
        read_image(path, kind="mask" if what == "mask" else "image")
        return
    if size[0] * size[1] > MAX_UPLOAD_PIXELS:
        raise UsageError(
            f"the {what} has {size[0] * size[1]:,} pixels; the UI accepts at most "
            f"{MAX_UPLOAD_PIXELS:,}: downscale it, or use the command line"
        )


def cli_command(files: RunFiles, seed: int, prior: str, faces: FacesOptions | None = None) -> str:
    parts = ["guidestack run recipe.toml", f"{files.name}{files.image.suffix or '.png'}"]
    parts += faces.cli() if faces is not None else []
    if files.mask is not None:
        parts.append(f"--mask {files.mask.name}")
    if files.reference is not None:
        parts.append(f"--reference {files.reference.name}")
    parts += [f"--prior {prior}", f"--seed {seed}", "-o out"]
    return " ".join(parts)


def _run_report(report: dict[str, Any], command: str, entry: dict[str, Any]) -> dict[str, Any]:
    """run.json of a UI run: the CLI's fields plus the command that re-runs it."""
    return {
        **report,
        "recipe_source": "recipe.toml (guidestack ui)",
        "cli": command,
        "inputs": [entry],
    }


def execute(
    raw: dict,
    files: RunFiles,
    seed: int,
    priors: PriorCache,
    folder: Path,
    *,
    on_event: Callable[..., None] | None = None,
    cancel: threading.Event | None = None,
    faces: FacesOptions | None = None,
) -> RunOutcome:
    """Run ``raw`` on ``files`` as ``guidestack run recipe.toml <name>.png --seed seed`` does and
    write the output, comparison, ``run.json`` and ``recipe.toml`` into ``folder``.  With
    ``faces``, the photo goes through the ``faces`` pipeline, as ``--faces`` does."""
    registry = priors.registry
    raw = copy.deepcopy(raw)
    refuse_paths(raw)
    draft = api.load_recipe(copy.deepcopy(raw), registry=registry)
    prior = priors.get(draft.prior.name, draft.prior.dtype)
    recipe = draft.for_prior(prior, registry)
    needs = api.requirements(recipe, registry=registry)
    if faces is not None and files.mask is not None:
        raise UsageError(
            "a mask cannot be combined with faces in the wild (as --mask with --faces)"
        )
    if "mask" in needs and files.mask is None:
        raise UsageError("this recipe needs a mask (white = missing): draw or upload one")
    if "reference" in needs and files.reference is None:
        raise UsageError("this recipe needs a reference image: upload one")
    for path, what in (
        (files.image, "image"),
        (files.mask, "mask"),
        (files.reference, "reference"),
    ):
        if path is not None:
            check_upload(path, what)

    def callback(event: str, **info: Any) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("run cancelled")
        if on_event is not None:
            on_event(event, **info)

    result = api.run(
        recipe,
        prior,
        files.image,
        mask=files.mask,
        reference=files.reference,
        seed=seed,
        names=[files.name],
        device="cpu",
        faces=faces.options() if faces is not None else False,
        callback=callback,
        registry=registry,
    )
    folder.mkdir(parents=True, exist_ok=True)
    outputs = result.save(folder, files.name, overwrite=True)
    out_png, compare = folder / outputs[0], folder / outputs[1]
    command = cli_command(files, seed, prior.name, faces)
    toml_path = write_text(
        to_toml(raw, f"saved by guidestack ui {__version__}; re-run with:\n  {command}"),
        folder / "recipe.toml",
    )
    entry = {**result.entry, "file": f"{files.name}{files.image.suffix}", "outputs": outputs}
    manifest = write_json(_run_report(result.report, command, entry), folder / "run.json")
    extra = [p for p in (files.mask, files.reference) if p is not None and p.parent == folder]
    written = [out_png, manifest, toml_path, compare, *extra]
    if faces is None:
        return RunOutcome(folder, out_png, compare, manifest, toml_path, command, written)
    detected = save_pil(_boxed(result), folder / f"{files.name}_detected.png")
    restored = [folder / name for name in outputs if name.endswith("_restored.png")]
    return RunOutcome(
        folder,
        out_png,
        compare,
        manifest,
        toml_path,
        command,
        [*written, detected, *restored],
        detected=detected,
        faces=restored,
        warnings=result.warnings,
    )


def _boxed(result: Any):
    """The input photo with each detected face boxed and numbered."""
    from PIL import ImageDraw

    photo = tensor_to_pil(result.input).convert("RGB")
    draw = ImageDraw.Draw(photo)
    width = max(2, round(max(photo.size) / 200))
    for i, face in enumerate(result.entry.get("faces", [])):
        x0, y0, x1, y1 = face["box"]
        draw.rectangle((x0, y0, x1, y1), outline=(255, 64, 64), width=width)
        draw.text((x0 + width, y0 + width), f"{i}", fill=(255, 64, 64))
    return photo
