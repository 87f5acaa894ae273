"""Recipes: TOML files that pick and configure stages, validated with every problem at once.

A recipe is data, never code: it names registered plugins, not import paths.  Resolution order:

1. read the TOML (a built-in or plugin recipe name, or a ``.toml`` path);
2. merge ``extends`` bases (tables merge key by key; a child's ``[[stage]]`` list replaces the
   base's, its ``[stage.<id>]`` tables change options of the base's stages);
3. apply ``per_prior`` tables for the prior in use (keyed by prior name or backend kind);
4. apply ``--set path=value`` overrides (values parsed as TOML);
5. validate ``[prior]``, ``[sampler]``, ``[guidance]`` and each ``[[stage]]`` with the stage's
   options model, reporting all problems with paths such as ``stage[1].weight``.
"""

from __future__ import annotations

import copy
import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import GuidanceConfig, OutputConfig, PriorConfig, SamplerConfig
from .errors import PluginError, RecipeError
from .registry import Registry
from .stage import StageOptions

TOP_LEVEL_KEYS = (
    "description",
    "extends",
    "prior",
    "sampler",
    "guidance",
    "stage",
    "per_prior",
    "example",
    "output",
)
#: how many recipes an ``extends`` chain may hold (a recipe extends at most MAX_EXTENDS others)
MAX_EXTENDS = 32
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "prior": PriorConfig,
    "sampler": SamplerConfig,
    "guidance": GuidanceConfig,
    "output": OutputConfig,
}


@dataclass
class Recipe:
    """A validated recipe, ready to build a run."""

    source: str
    description: str
    prior: PriorConfig
    sampler: SamplerConfig
    guidance: GuidanceConfig
    stages: list[StageOptions]
    raw: dict[str, Any]
    output: OutputConfig = field(default_factory=OutputConfig)
    example: dict[str, str] = field(default_factory=dict)
    base_dir: Path | None = None
    #: the merged recipe before ``per_prior`` and overrides, and the overrides, so the recipe can
    #: be specialised again for another prior (:meth:`for_prior`)
    template: dict[str, Any] | None = None
    overrides: list[tuple[str, Any]] = field(default_factory=list)
    #: ``(name, kind)`` of the prior whose ``per_prior`` tables were applied, if any
    prior_key: tuple[str, str] | None = None

    def for_prior(self, prior: Any, registry: Registry) -> Recipe:
        """This recipe as it runs on ``prior``: its ``per_prior`` tables for the prior's kind and
        name applied before the overrides, and its timesteps checked against the prior's
        schedule (:class:`RecipeError` with every problem).  ``self`` when nothing changes."""
        key = (str(getattr(prior, "name", "")), str(getattr(prior, "kind", "")))
        recipe = self
        changed = self.template is not None and key != self.prior_key
        if changed and (self.template.get("per_prior") or self.prior_key is not None):
            recipe = specialise(
                self.template, self.overrides, registry, self.source, self.base_dir, key
            )
        if hasattr(prior, "num_train_timesteps"):
            problems = prior_problems(recipe, prior, registry)
            if problems:
                raise RecipeError(recipe.source, problems)
        return recipe

    def resolved(self) -> dict[str, Any]:
        """The recipe as it will run (for run.json), in TOML-able form."""
        return {
            "description": self.description,
            "prior": self.prior.model_dump(),
            "sampler": self.sampler.model_dump(),
            "guidance": self.guidance.model_dump(),
            "output": self.output.model_dump(),
            "stage": [s.model_dump(exclude_none=True) for s in self.stages],
        }


# --- finding and reading ---------------------------------------------------------------------


def recipe_index(registry: Registry) -> dict[str, tuple[str, Traversable | Path]]:
    """Every named recipe: name -> (plugin, file)."""
    index: dict[str, tuple[str, Traversable | Path]] = {}
    for plugin, folder in registry.recipe_folders:
        for item in sorted(folder.iterdir(), key=lambda p: p.name):
            if not item.name.endswith(".toml"):
                continue
            name = item.name[: -len(".toml")]
            if name in index and index[name][0] != plugin:
                raise PluginError(
                    f"recipe name '{name}' is provided by plugin '{index[name][0]}' and by plugin "
                    f"'{plugin}'. Uninstall or block one of them (GUIDESTACK_BLOCK_PLUGINS={plugin})."
                )
            index[name] = (plugin, item)
    return index


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref or "\\" in ref


def looks_like_toml_text(ref: str) -> bool:
    """A recipe given as TOML text rather than a name or a path (it has a line break or ``=``)."""
    return "\n" in ref or "=" in ref


def parse_toml_text(text: str, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(label, [("", f"not valid TOML: {exc}")]) from exc


def read_recipe_file(
    ref: str, registry: Registry, relative_to: Path | None = None
) -> tuple[str, dict[str, Any], Path | None]:
    """Read one recipe (no ``extends`` resolution): ``(label, raw dict, folder for relative paths)``."""
    if _looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise RecipeError(str(path), [("", "no such recipe file")])
        label, text, base = str(path), _read_text(path, str(path)), path.parent
    else:
        index = recipe_index(registry)
        if ref not in index:
            close = difflib.get_close_matches(ref, list(index), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
            raise RecipeError(
                ref,
                [
                    (
                        "",
                        f"unknown recipe '{ref}'{hint} `guidestack recipes` lists them; a file path must end in .toml",
                    )
                ],
            )
        plugin, item = index[ref]
        origin = "built-in" if plugin == "builtin" else f"plugin {plugin}"
        label, text, base = f"{ref} ({origin})", item.read_text(encoding="utf-8-sig"), None
    return label, parse_toml_text(text, label), base


def _read_text(path: Path, label: str) -> str:
    try:  # utf-8-sig: a byte-order mark (Windows Notepad writes one) is not part of the TOML
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(label, [("", f"cannot read the file: {exc}")]) from exc


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Tables merge recursively; any other value (lists included) in ``child`` replaces ``base``'s."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(
    ref: str | Mapping[str, Any],
    registry: Registry,
    relative_to: Path | None = None,
    _chain: tuple[str, ...] = (),
) -> tuple[str, dict[str, Any], Path | None]:
    """Read ``ref`` (a recipe name, a ``.toml`` path, TOML text or an already parsed dict) and
    merge its ``extends`` chain.  Relative ``extends`` paths of text and dicts start at the
    current folder."""
    if isinstance(ref, Mapping):
        label, raw, base_dir = "<dict>", copy.deepcopy(dict(ref)), relative_to
    elif looks_like_toml_text(ref):
        label, raw, base_dir = "<text>", parse_toml_text(ref, "<text>"), relative_to
    else:
        label, raw, base_dir = read_recipe_file(ref, registry, relative_to)
    if label in _chain:
        raise RecipeError(
            label,
            [("extends", "recipes extend each other in a cycle: " + " -> ".join((*_chain, label)))],
        )
    if len(_chain) >= MAX_EXTENDS:
        raise RecipeError(
            _chain[0],
            [
                (
                    "extends",
                    f"the chain of extended recipes is more than {MAX_EXTENDS} deep "
                    f"({_chain[0]} -> {_chain[1] if len(_chain) > 1 else label} -> ... -> {label}); "
                    "merge some of them",
                )
            ],
        )
    parent = raw.get("extends")
    if parent is None:
        return label, raw, base_dir
    if not isinstance(parent, str):
        raise RecipeError(label, [("extends", "must be a recipe name or a .toml path")])
    try:
        _, base_raw, parent_dir = load_raw(parent, registry, base_dir, (*_chain, label))
    except RecipeError as exc:
        if exc.source in (label, *_chain) or "cycle" in str(exc):
            raise
        problems = [
            (f"extends ({exc.source})" + (f".{p}" if p else ""), m) for p, m in exc.problems
        ]
        raise RecipeError(label, problems) from exc
    child = {k: v for k, v in raw.items() if k != "extends"}
    # `[stage.<id>]` tables (not a `[[stage]]` list) change options of the base's stages
    edits = child.pop("stage") if isinstance(child.get("stage"), dict) else None
    merged = deep_merge(base_raw, child)
    for path, value in flatten({"stage": edits or {}}):
        set_path(merged, path, copy.deepcopy(value), label)
    if "description" not in raw:
        merged["description"] = base_raw.get("description", "")
    return label, merged, base_dir if base_dir is not None else parent_dir


# --- overrides -------------------------------------------------------------------------------

_INDEX = re.compile(r"^(?P<name>[A-Za-z_][\w-]*)\[(?P<index>\d+)\]$")


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``0.3``, ``true``, ``[1, 2]``, ``"x"``); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _stage_position(stages: list[dict[str, Any]], key: str) -> int | None:
    for i, entry in enumerate(stages):
        if entry.get("id", entry.get("use")) == key:
            return i
    return None


def apply_override(raw: dict[str, Any], assignment: str, label: str) -> None:
    """Apply ``path=value``; stages are addressed as ``stage[1]`` or ``stage.<id>``."""
    if "=" not in assignment:
        raise RecipeError(label, [("--set", f"'{assignment}' is not of the form path=value")])
    path, _, text = assignment.partition("=")
    set_path(raw, path.strip(), parse_value(text.strip()), label)


def set_path(raw: dict[str, Any], path: str, value: Any, label: str) -> None:
    parts = [p for p in path.split(".") if p]
    if not parts:
        raise RecipeError(label, [("--set", "empty path")])
    node: Any = raw
    i = 0
    while i < len(parts) - 1:
        part = parts[i]
        match = _INDEX.match(part)
        if match or part == "stage":
            stages = node.setdefault("stage", []) if isinstance(node, dict) else None
            if not isinstance(stages, list):
                raise RecipeError(label, [(path, "stage must be a list of tables")])
            if match:
                pos = int(match["index"])
            else:
                i += 1
                pos = _stage_position(stages, parts[i])
                if pos is None:
                    known = [s.get("id", s.get("use")) for s in stages]
                    raise RecipeError(
                        label,
                        [
                            (
                                path,
                                f"no stage with id '{parts[i]}' (stages: {', '.join(map(str, known)) or 'none'})",
                            )
                        ],
                    )
            if pos >= len(stages):
                raise RecipeError(
                    label,
                    [(path, f"stage index {pos} out of range (the recipe has {len(stages)})")],
                )
            node = stages[pos]
        else:
            if not isinstance(node, dict):
                raise RecipeError(label, [(path, f"'{part}' is not a table")])
            node = node.setdefault(part, {})
        i += 1
    if not isinstance(node, dict):
        raise RecipeError(label, [(path, "not a table")])
    node[parts[-1]] = value


def flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]``; ``stage`` tables keyed by id stay addressable."""
    items: list[tuple[str, Any]] = []
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not (prefix.startswith("stage.") and prefix.count(".") >= 2):
            items.extend(flatten(value, path + "."))
        else:
            items.append((path, value))
    return items


def apply_per_prior(
    raw: dict[str, Any], prior_name: str, prior_kind: str, label: str
) -> dict[str, Any]:
    """Merge ``[per_prior.<kind>]`` then ``[per_prior.<name>]`` (more specific wins)."""
    out = copy.deepcopy(raw)
    table = out.pop("per_prior", {}) or {}
    for key in (prior_kind, prior_name):
        if isinstance(table.get(key), dict):
            for path, value in flatten(table[key]):
                set_path(out, path, value, f"{label} per_prior.{key}")
    return out


# --- validation -------------------------------------------------------------------------------


def _format_loc(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _errors(prefix: str, exc: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            name = str(err["loc"][-1])
            close = difflib.get_close_matches(name, list(model.model_fields), n=1)
            message = f"unknown field '{name}'" + (f"; did you mean '{close[0]}'?" if close else "")
        out.append((_format_loc(prefix, err["loc"]), message))
    return out


def validate(
    raw: dict[str, Any], registry: Registry, label: str, base_dir: Path | None = None
) -> Recipe:
    """Validate a merged recipe dict; raise one :class:`RecipeError` listing every problem."""
    problems: list[tuple[str, str]] = []
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
            problems.append(
                (key, "unknown top-level key" + (f"; did you mean '{close[0]}'?" if close else ""))
            )
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        problems.append(("description", "every recipe needs a non-empty description string"))
    sections: dict[str, BaseModel] = {}
    for name, model in _SECTION_MODELS.items():
        value = raw.get(name, {})
        if not isinstance(value, dict):
            problems.append((name, "must be a table"))
            continue
        try:
            sections[name] = model.model_validate(value)
        except ValidationError as exc:
            problems.extend(_errors(name, exc, model))
    stages, stage_problems = _validate_stages(raw.get("stage", []), registry)
    problems.extend(stage_problems)
    if "per_prior" in raw and not isinstance(raw["per_prior"], dict):
        problems.append(("per_prior", "must be a table of tables keyed by prior name or kind"))
    example = raw.get("example", {})
    if not isinstance(example, dict) or not all(isinstance(v, str) for v in example.values()):
        problems.append(("example", "must be a table of file paths (image, mask, reference)"))
    if not problems:
        problems.extend(_cross_checks(sections, stages, registry))
    if problems:
        raise RecipeError(label, problems)
    return Recipe(
        source=label,
        description=description,
        prior=sections["prior"],
        sampler=sections["sampler"],
        guidance=sections["guidance"],
        output=sections["output"],
        stages=stages,
        raw=raw,
        example=dict(example),
        base_dir=base_dir,
    )


def _validate_stages(
    entries: Any, registry: Registry
) -> tuple[list[StageOptions], list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    stages: list[StageOptions] = []
    if not isinstance(entries, list):
        return [], [("stage", "must be an array of tables ([[stage]])")]
    known = registry.names("stage")
    ids: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"stage[{i}]"
        if not isinstance(entry, dict):
            problems.append((where, "must be a table"))
            continue
        use = entry.get("use")
        if not isinstance(use, str):
            problems.append(
                (
                    f"{where}.use",
                    "missing: name the stage plugin to use (`guidestack plugins` lists them)",
                )
            )
            continue
        stage = registry.get("stage", use)
        if stage is None:
            close = difflib.get_close_matches(use, known, n=3)
            hint = (
                f"; did you mean {', '.join(repr(c) for c in close)}?"
                if close
                else "; `guidestack plugins` lists the installed ones"
            )
            problems.append((f"{where}.use", f"unknown stage '{use}'{hint}"))
            continue
        try:  # the options model alone: a lazily registered stage is not imported to check
            options = stage.options.model_validate(entry)
        except ValidationError as exc:
            problems.extend(_errors(where, exc, stage.options))
            continue
        problems.extend(_validate_nested_refs(where, options, registry))
        sid = options.id or use
        if sid in ids:
            problems.append(
                (
                    f"{where}.id",
                    f"two stages are called '{sid}' (stage[{ids[sid]}] too); give one an `id`",
                )
            )
        ids[sid] = i
        stages.append(options)
    return stages, problems


def _validate_nested_refs(
    where: str, options: BaseModel, registry: Registry
) -> list[tuple[str, str]]:
    """Validate plugin references inside stage options (e.g. ``restorer = {use = ...}``)."""
    from .refs import PluginRef  # local: refs imports registry lookups lazily

    problems: list[tuple[str, str]] = []
    for name in type(options).model_fields:
        value = getattr(options, name)
        if isinstance(value, PluginRef):
            problems.extend(value.check(f"{where}.{name}", registry))
    return problems


def _cross_checks(
    sections: dict[str, BaseModel], stages: list[StageOptions], registry: Registry
) -> list[tuple[str, str]]:
    """Problems that involve several sections (reported only when each section is valid)."""
    problems: list[tuple[str, str]] = []
    for hook in ("initial_latent", "optimise"):
        owners = [s.id or s.use for s in stages if hook in (registry.get("stage", s.use).hooks)]
        if len(owners) > 1:
            problems.append(
                (
                    "stage",
                    f"stages {' and '.join(repr(o) for o in owners)} both implement {hook}; a recipe may combine only one such stage",
                )
            )
    sampler: SamplerConfig = sections["sampler"]  # type: ignore[assignment]
    guidance: GuidanceConfig = sections["guidance"]  # type: ignore[assignment]
    hooks = [registry.get("stage", s.use).hooks for s in stages]
    # an optimise stage (SHRED) uses the losses itself, not the loop's update rule
    guides = any("guidance_loss" in h for h in hooks) and not any("optimise" in h for h in hooks)
    problem = guidance_rule_problem(sampler, guidance) if guides else None
    if problem is not None:
        problems.append(problem)
    return problems


Overrides = Iterable[str] | Iterable[tuple[str, Any]] | Mapping[str, Any]


def normalise_overrides(overrides: Overrides | None, label: str) -> list[tuple[str, Any]]:
    """``["a.b=1"]``, ``[("a.b", 1)]`` or ``{"a.b": 1}`` as ``[("a.b", 1)]`` (strings parsed as
    TOML values, as ``--set`` does)."""
    if overrides is None:
        return []
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    out: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            if "=" not in item:
                raise RecipeError(label, [("--set", f"'{item}' is not of the form path=value")])
            path, _, text = item.partition("=")
            out.append((path.strip(), parse_value(text.strip())))
        else:
            path, value = item
            out.append((str(path), value))
    return out


def specialise(
    template: dict[str, Any],
    overrides: list[tuple[str, Any]],
    registry: Registry,
    label: str,
    base_dir: Path | None,
    prior_key: tuple[str, str] | None,
) -> Recipe:
    """Apply ``per_prior`` for ``prior_key`` (or drop the tables), then the overrides, validate."""
    if prior_key is not None:
        raw = apply_per_prior(template, prior_key[0], prior_key[1], label)
    else:
        raw = copy.deepcopy(template)
        per_prior = raw.pop("per_prior", None)
        if per_prior is not None and not isinstance(per_prior, dict):
            raw["per_prior"] = per_prior  # let validate report it
    for path, value in overrides:
        set_path(raw, path, copy.deepcopy(value), label)
    recipe = validate(raw, registry, label, base_dir)
    recipe.template, recipe.overrides, recipe.prior_key = template, list(overrides), prior_key
    return recipe


def guidance_rule_problem(
    sampler: SamplerConfig, guidance: GuidanceConfig
) -> tuple[str, str] | None:
    """The problem of guiding with this rule on this sampler, if any (for recipes whose stages
    guide, and for losses added to a run from Python)."""
    if (
        guidance.rule == "mean_shift"
        and sampler.kind == "ddim"
        and sampler.eta == 0
        and guidance.scale > 0
    ):
        return (
            "guidance.rule",
            'mean_shift scales the step\'s variance, which is zero for DDIM with eta = 0; use sampler.kind = "ddpm", eta > 0, or rule "dynamic"/"x0"',
        )
    return None


def load_recipe(
    ref: str | Mapping[str, Any],
    registry: Registry,
    overrides: Overrides | None = (),
    prior_name: str | None = None,
    prior_kind: str | None = None,
) -> Recipe:
    """Read, merge, specialise for the prior, override and validate a recipe.

    ``ref`` is a recipe name, a ``.toml`` path, TOML text or a dict; ``overrides`` are ``--set``
    assignments (see :func:`normalise_overrides`).  Without a prior the ``per_prior`` tables are
    kept aside, and :meth:`Recipe.for_prior` applies them once the prior is known.
    """
    label, raw, base_dir = load_raw(ref, registry)
    key = None
    if prior_name is not None or prior_kind is not None:
        key = (prior_name or "", prior_kind or "")
    return specialise(raw, normalise_overrides(overrides, label), registry, label, base_dir, key)


def prior_problems(recipe: Recipe, prior: Any, registry: Registry) -> list[tuple[str, str]]:
    """What in ``recipe`` cannot run on ``prior``: timesteps beyond its schedule, and each
    stage's own :meth:`~guidestack.engine.stage.Stage.prior_problems`."""
    top = prior.num_train_timesteps - 1
    problems = []
    start = recipe.sampler.start
    if start is not None and start > top:
        problems.append(("sampler.start", f"{start} is beyond the prior's last timestep {top}"))
    for i, options in enumerate(recipe.stages):
        entry = registry.get("stage", options.use)
        # a stage not imported yet (lazy) is checked by its options model alone
        found = (
            options.prior_problems(prior)
            if entry.lazy
            else entry.obj.prior_problems(options, prior)
        )
        for field_name, message in found:
            problems.append((f"stage[{i}].{field_name}", message))
    return problems


def recipe_requirements(recipe: Recipe, registry: Registry) -> set[str]:
    """Inputs the recipe's stages cannot work without (``"mask"``, ``"reference"``), so callers
    can refuse a run before anything is written."""
    needs: set[str] = set()
    for options in recipe.stages:
        cls = registry.stage(options.use)
        needs |= set(getattr(cls, "requires", ()))
        requires_for = getattr(cls, "requires_for", None)
        if requires_for is not None:
            needs |= set(requires_for(options))
    return needs
