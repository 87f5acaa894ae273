"""``guidestack new-plugin NAME``: write a third-party plugin package that works out of the box.

The package has the layout of examples/guidestack-plugin-example: a ``pyproject.toml`` with the
``guidestack`` entry point, a plugin module declaring ``hook_api_version``, a guidance stage
(smoothed total variation), a projection stage (keeps the input's average colour), a recipe
folder and pytest tests written with the ``guidestack.testing`` fixtures.  Templates are :class:`string.Template`
strings (``$name``), so the Python and TOML they hold need no brace escaping.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from guidestack import OutputError, UsageError
from guidestack.api import HOOK_API_VERSION

if TYPE_CHECKING:  # pragma: no cover
    from guidestack import Registry

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_NAME = 32

PYPROJECT = Template("""\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "guidestack-$name"
version = "0.1.0"
description = "guidestack plugin $name: total-variation guidance, a colour-keeping projection and a demo recipe"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["guidestack>=$guidestack_version", "torch>=2.3", "pydantic>=2.6"]

[project.optional-dependencies]
test = ["pytest>=8"]

# This makes the package a guidestack plugin: group "guidestack", name = the plugin name
# (what GUIDESTACK_BLOCK_PLUGINS takes), value = the module with the register() hook.
[project.entry-points.guidestack]
$name = "$module.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
$module = ["recipes/*.toml"]

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.ruff]
line-length = 100
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "SIM"]

[tool.ruff.lint.isort]
known-first-party = ["$module"]
""")

INIT = Template('''\
"""guidestack plugin $name."""

__version__ = "0.1.0"
''')

PLUGIN = Template('''\
"""The module the ``guidestack`` entry point names: declares the hook API it was written
against and registers the plugin's stages and recipe folder."""

from __future__ import annotations

from importlib.resources import files

from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.registry import Registry

from .stages import STAGES

#: the guidestack hook API this plugin is written against; a guidestack providing an older API
#: skips the plugin with a warning saying why
hook_api_version = $api


@hookimpl
def register(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
    registry.add_recipes(files("$module") / "recipes")
''')

STAGES = Template('''\
"""Stages of the plugin $name.

Each class is what one ``[[stage]]`` table of a recipe configures.  Replace them with your own.
A stage implements any of these run hooks (guidestack hook API $api) as methods marked
``@hookimpl``, here in the order the loop calls them; guidestack's docs/hooks.md is the full
reference (when each runs, what it receives):

$hooks
"""

from __future__ import annotations

import math

import torch
from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import GuidanceOptions, Stage, StageOptions
from pydantic import Field


class TotalVariationOptions(GuidanceOptions):
    eps: float = Field(
        0.01,
        gt=0.0,
        le=1.0,
        description="Charbonnier smoothing of the gradient magnitude (smaller = closer to plain "
        "total variation, less smooth a loss)",
    )


def total_variation(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Smoothed total variation per sample, ``[N]``: sum of sqrt(dx^2 + dy^2 + eps^2) - eps."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return ((dx.square() + dy.square() + eps * eps).sqrt() - eps).flatten(1).sum(dim=1)


class TotalVariation(Stage):
    """A guidance stage: its loss on x0 is summed with the other stages' (times ``weight``) and
    the recipe's guidance rule turns the gradient into an update.  Total variation is low for
    piecewise-smooth images, so this removes noise while keeping edges."""

    name = "$name"
    description = "Guidance towards piecewise-smooth images: smoothed total variation of x0."
    Options = TotalVariationOptions

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        return total_variation(state.x0, self.options.eps)


class MeanLockOptions(StageOptions):
    strength: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="fraction of the colour correction applied after each step (1 = exact)",
    )


class MeanLock(Stage):
    """A projection stage: after every step, move each channel's mean of x_prev to that of the
    input at the same noise level, sqrt(abar) * mean(y) (the noise has zero mean), so the output
    keeps the input's average colour whatever the guidance does."""

    name = "$name-mean"
    description = "Projection: keep the latent's per-channel mean at the noised input's."
    Options = MeanLockOptions

    @hookimpl
    def project(self, ctx: RunContext, state: StepState) -> None:
        x = state.x_prev
        colour = ctx.observation.image.mean(dim=(2, 3), keepdim=True)
        target = math.sqrt(ctx.abar(state.t_prev)) * colour
        shift = target.to(x.dtype) - x.mean(dim=(2, 3), keepdim=True)
        state.x_prev = x + self.options.strength * shift


STAGES = (TotalVariation, MeanLock)
''')

RECIPE = Template("""\
description = "Demo of the $name plugin: guidestack's PGDiff restoration plus total-variation guidance, keeping the input's average colour. Replace it with your own."

# Start from the built-in recipe (sampler, guidance rule and its per-prior tuning) and add the
# plugin's stages.  A child's [[stage]] list replaces the base's, so the base stage is repeated.
extends = "restore"

[[stage]]
use = "smooth-semantics"
restorer = { use = "gaussian-blur", sigma = 1.5 }

[[stage]]
use = "$name"
weight = 0.3

[[stage]]
use = "$name-mean"
""")

TESTS = Template('''\
"""Tests of the plugin $name.

They use the fixtures guidestack gives pytest (guidestack.testing): gs_registry, gs_prior (a
tiny exact 16x16 face prior), gs_faces, gs_run and gs_recorder."""

from __future__ import annotations

import math

import torch
from guidestack.engine.recipe import recipe_index

from $module.stages import total_variation

NAME = "$name"
MEAN = f"{NAME}-mean"
DDPM = {"kind": "ddpm", "steps": 10}


def test_installed_plugin_is_discovered(gs_registry):
    assert gs_registry.get("stage", NAME).plugin == NAME
    assert gs_registry.get("stage", NAME).hooks == ("guidance_loss",)
    assert gs_registry.get("stage", MEAN).hooks == ("project",)
    assert recipe_index(gs_registry)[f"{NAME}-demo"][0] == NAME


def test_total_variation_is_zero_on_flat_images(gs_faces):
    assert torch.all(total_variation(torch.full_like(gs_faces, 0.3), 0.01) == 0)
    assert torch.all(total_variation(gs_faces, 0.01) > 0)


def test_guidance_makes_outputs_smoother(gs_run):
    plain = gs_run({"sampler": DDPM, "stage": []})
    guidance = {"rule": "x0", "scale": 0.02}
    smooth = gs_run({"sampler": DDPM, "guidance": guidance, "stage": [{"use": NAME}]})
    assert torch.all(total_variation(smooth.image, 0.01) < total_variation(plain.image, 0.01))


def test_mean_lock_keeps_the_input_colour(gs_run, gs_faces, gs_recorder):
    run = gs_run({"sampler": DDPM, "stage": [{"use": MEAN}]}, recorder=gs_recorder)
    for step in run.steps:
        target = math.sqrt(run.ctx.abar(step.t_prev)) * gs_faces.mean(dim=(2, 3))
        assert torch.allclose(step.x_prev.mean(dim=(2, 3)), target, atol=1e-5)
    assert gs_recorder.count("project", MEAN) == len(run.steps) == 10


def test_demo_recipe_runs(gs_run, gs_faces):
    run = gs_run(f"{NAME}-demo", overrides=["sampler.steps=5"])
    assert run.image.shape == gs_faces.shape
    assert torch.isfinite(run.image).all()
''')

README = Template("""\
# guidestack-$name

A [guidestack](https://pypi.org/project/guidestack/) plugin, made with `guidestack new-plugin $name`.

| name | kind | hook | what |
|---|---|---|---|
| `$name` | stage | `guidance_loss` | smoothed total variation of x0 (option `eps`, plus `weight`, `window`) |
| `$name-mean` | stage | `project` | keeps the latent's per-channel mean at the noised input's (option `strength`) |
| `$name-demo` | recipe | | smooth-semantics restoration + `$name` + `$name-mean` |

```bash
pip install -e .                      # registers the plugin (entry-point group "guidestack")
pytest                                # the tests use guidestack's pytest fixtures
guidestack plugins                    # lists "$name"
guidestack explain $name              # options, types, defaults, constraints
guidestack run $name-demo face.png -o out/
GUIDESTACK_BLOCK_PLUGINS=$name guidestack plugins    # switch it off without uninstalling
```

Edit `src/$module/stages.py` (the stages), `src/$module/recipes/` (recipes) and `tests/`.
guidestack's docs/hooks.md documents every hook, when the loop calls it, and the hook API
version declared in `src/$module/plugin.py`; its docs/plugins.md is the guide.
""")

GITIGNORE = "__pycache__/\n*.egg-info/\nbuild/\ndist/\n.pytest_cache/\n"


def hook_list() -> str:
    """The run hooks with their arguments and first docstring sentence, from the hookspecs."""
    from guidestack import api

    lines = []
    for hook in api.run_hooks():
        params = ", ".join(["self", *hook["arguments"]])
        lines.append(f"    {hook['name']}({params})")
        lines += textwrap.wrap(
            hook["summary"], width=99, initial_indent=" " * 8, subsequent_indent=" " * 8
        )
    return "\n".join(lines)


def check_name(name: str, registry: Registry | None = None) -> None:
    """Refuse names that are not valid plugin names, or that an installed plugin already uses
    (the new plugin's names would clash as soon as it is installed)."""
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
        raise UsageError(
            f"plugin name {name!r} must be lowercase letters, digits and single dashes, start "
            f"with a letter and have at most {MAX_NAME} characters (e.g. sharpen, face-symmetry)"
        )
    if registry is None:
        return
    from guidestack import api

    taken = []
    if name in registry.plugins:
        taken.append(f"plugin '{name}'")
    taken += [
        f"stage '{n}'" for n in (name, f"{name}-mean") if registry.get("stage", n) is not None
    ]
    if f"{name}-demo" in {r["name"] for r in api.list_recipes(registry=registry)}:
        taken.append(f"recipe '{name}-demo'")
    if taken:
        raise UsageError(f"{', '.join(taken)} already installed; choose another plugin name")


def scaffold(name: str, output: Path, registry: Registry | None = None) -> tuple[Path, list[Path]]:
    """Write ``output/guidestack-NAME/``; returns the package folder and the files written."""
    from guidestack import __version__

    check_name(name, registry)
    module = "guidestack_" + name.replace("-", "_")
    root = Path(output) / f"guidestack-{name}"
    if root.exists():
        raise OutputError(f"{root} already exists; choose another name or --output folder")
    values = {
        "name": name,
        "module": module,
        "api": HOOK_API_VERSION,
        "hooks": hook_list(),
        "guidestack_version": __version__,
    }
    package = Path("src") / module
    files = {
        Path("pyproject.toml"): PYPROJECT,
        Path("README.md"): README,
        Path(".gitignore"): Template(GITIGNORE),
        package / "__init__.py": INIT,
        package / "plugin.py": PLUGIN,
        package / "stages.py": STAGES,
        package / "recipes" / f"{name}-demo.toml": RECIPE,
        Path("tests") / f"test_{module}.py": TESTS,
    }
    written = []
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.substitute(values), encoding="utf-8")
        written.append(path)
    return root, written
