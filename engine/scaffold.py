"""``guidestack new-plugin NAME``: write a third-party plugin package that works out of the box.

The package has the layout of examples/guidestack-plugin-example: a ``pyproject.toml`` with the
``guidestack`` entry point, a plugin module declaring ``hook_api_version``, a guidance stage
(smoothed total variation), a projection stage (confidence clipping), a recipe folder and pytest
tests written with the ``guidestack.testing`` fixtures.  Templates are :class:`string.Template`
strings (``$name``), so the Python and TOML they hold need no brace escaping.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from .errors import OutputError, UsageError
from .hookspecs import HOOK_API_VERSION

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_NAME = 32

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "guidestack-$name"
version = "0.1.0"
description = "guidestack plugin $name: total-variation guidance, confidence clipping and a demo recipe"
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
''')

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
#: refuses to load the plugin with a clear message
hook_api_version = $api


@hookimpl
def register(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
    registry.add_recipes(files("$module") / "recipes")
''')

STAGES = Template('''\
"""The stages of the $name plugin: each class is what one ``[[stage]]`` table of a recipe
configures.  Replace them with your own (docs/plugins.md lists every hook)."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import GuidanceOptions, Stage, StageOptions


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


class ClipOptions(StageOptions):
    k: float = Field(
        1.7,
        gt=0.0,
        le=10.0,
        description="noise standard deviations allowed above the clean range [-1, 1]",
    )


class ConfidenceClip(Stage):
    """A projection stage: after every step, clip x_prev to +-(sqrt(abar) + k sqrt(1 - abar))
    at its noise level, the range an image in [-1, 1] plus k noise deviations reaches."""

    name = "$name-clip"
    description = "Projection: clip the latent to +-(sqrt(abar) + k sqrt(1 - abar)) after every step."
    Options = ClipOptions

    @hookimpl
    def project(self, ctx: RunContext, state: StepState) -> None:
        abar = ctx.abar(state.t_prev)
        limit = math.sqrt(abar) + self.options.k * math.sqrt(1.0 - abar)
        state.x_prev = state.x_prev.clamp(-limit, limit)


STAGES = (TotalVariation, ConfidenceClip)
''')

RECIPE = Template('''\
description = "Demo of the $name plugin: PGDiff-style restoration towards a blurred input, plus total-variation guidance and confidence clipping. Replace it with your own."

[sampler]
kind = "ddpm"
steps = 50

[guidance]
rule = "mean_shift"
scale = 0.1

[[stage]]
use = "smooth-semantics"
restorer = { use = "gaussian-blur", sigma = 1.5 }

[[stage]]
use = "$name"
weight = 0.5

[[stage]]
use = "$name-clip"
''')

TESTS = Template('''\
"""Tests of the $name plugin with the fixtures guidestack gives pytest (guidestack.testing):
gs_registry, gs_prior (tiny exact 16x16 face prior), gs_faces, gs_run, gs_recorder."""

from __future__ import annotations

import math

import torch

from guidestack.engine.recipe import recipe_index
from $module.stages import total_variation

DDPM = {"kind": "ddpm", "steps": 10}


def test_installed_plugin_is_discovered(gs_registry):
    assert gs_registry.get("stage", "$name").plugin == "$name"
    assert gs_registry.get("stage", "$name").hooks == ("guidance_loss",)
    assert gs_registry.get("stage", "$name-clip").hooks == ("project",)
    assert recipe_index(gs_registry)["$name-demo"][0] == "$name"


def test_total_variation_is_zero_on_flat_images(gs_faces):
    assert torch.all(total_variation(torch.full_like(gs_faces, 0.3), 0.01) == 0)
    assert torch.all(total_variation(gs_faces, 0.01) > 0)


def test_guidance_makes_outputs_smoother(gs_run):
    plain = gs_run({"sampler": DDPM, "stage": []})
    smooth = gs_run(
        {"sampler": DDPM, "guidance": {"rule": "x0", "scale": 0.02}, "stage": [{"use": "$name"}]}
    )
    assert torch.all(total_variation(smooth.image, 0.01) < total_variation(plain.image, 0.01))


def test_clip_bounds_every_latent(gs_run, gs_recorder):
    run = gs_run({"sampler": DDPM, "stage": [{"use": "$name-clip", "k": 0.5}]}, recorder=gs_recorder)
    for step in run.steps:
        abar = run.ctx.abar(step.t_prev)
        assert step.x_prev.abs().max() <= math.sqrt(abar) + 0.5 * math.sqrt(1 - abar) + 1e-6
    assert gs_recorder.count("project", "$name-clip") == len(run.steps) == 10


def test_demo_recipe_runs(gs_run, gs_faces):
    run = gs_run("$name-demo", overrides=["sampler.steps=5"])
    assert run.image.shape == gs_faces.shape
    assert torch.isfinite(run.image).all()
''')

README = Template('''\
# guidestack-$name

A [guidestack](https://pypi.org/project/guidestack/) plugin, made with `guidestack new-plugin $name`.

| name | kind | hook | what |
|---|---|---|---|
| `$name` | stage | `guidance_loss` | smoothed total variation of x0 (option `eps`, plus `weight`, `window`) |
| `$name-clip` | stage | `project` | clips the latent to +-(sqrt(abar) + k sqrt(1 - abar)) (option `k`) |
| `$name-demo` | recipe | | smooth-semantics restoration + `$name` + `$name-clip` |

```bash
pip install -e .                      # registers the plugin (entry-point group "guidestack")
pytest                                # the tests use guidestack's pytest fixtures
guidestack plugins                    # lists "$name"
guidestack explain $name              # options, types, defaults, constraints
guidestack run $name-demo face.png -o out/
GUIDESTACK_BLOCK_PLUGINS=$name guidestack plugins    # switch it off without uninstalling
```

Edit `src/$module/stages.py` (the stages), `src/$module/recipes/` (recipes) and `tests/`.
guidestack's docs/plugins.md documents every hook, when the loop calls it, and the hook API
version declared in `src/$module/plugin.py`.
''')

GITIGNORE = "__pycache__/\n*.egg-info/\nbuild/\ndist/\n.pytest_cache/\n"


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
    from .recipe import recipe_index

    taken = []
    if name in registry.plugins:
        taken.append(f"plugin '{name}'")
    taken += [f"stage '{n}'" for n in (name, f"{name}-clip") if registry.get("stage", n) is not None]
    if f"{name}-demo" in recipe_index(registry):
        taken.append(f"recipe '{name}-demo'")
    if taken:
        raise UsageError(f"{', '.join(taken)} already installed; choose another plugin name")


def scaffold(name: str, output: Path, registry: Registry | None = None) -> tuple[Path, list[Path]]:
    """Write ``output/guidestack-NAME/``; returns the package folder and the files written."""
    from .. import __version__

    check_name(name, registry)
    module = "guidestack_" + name.replace("-", "_")
    root = Path(output) / f"guidestack-{name}"
    if root.exists():
        raise OutputError(f"{root} already exists; choose another name or --output folder")
    values = {"name": name, "module": module, "api": HOOK_API_VERSION, "guidestack_version": __version__}
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
