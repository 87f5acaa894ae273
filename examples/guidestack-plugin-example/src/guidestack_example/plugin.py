"""The plugin module named by the ``guidestack`` entry point: it declares the hook API it was
written against and registers its stages, its recipe folder and a command."""

from __future__ import annotations

from importlib.resources import files

from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.registry import Registry

from . import command
from .options import ILVR, MIRROR_SYMMETRY

#: the guidestack hook API this plugin was written against; a guidestack that provides an
#: older API skips the plugin, saying why, instead of failing mid-run
hook_api_version = 1


@hookimpl
def register(registry: Registry) -> None:
    # lazy registration: import paths plus what listings and recipe checks need, so commands
    # that only list or validate never import the stages (nor torch); each class is imported
    # when a run first uses it, and refused if it disagrees with what is registered here
    registry.add_stage(
        "guidestack_example.symmetry:MirrorSymmetry",
        name="mirror-symmetry",
        description=MIRROR_SYMMETRY,
        options="guidestack_example.options:MirrorSymmetryOptions",
        hooks=("guidance_loss",),
    )
    registry.add_stage(
        "guidestack_example.ilvr:LowPassConsistency",
        name="ilvr",
        description=ILVR,
        options="guidestack_example.options:LowPassOptions",
        hooks=("project",),
    )
    registry.add_recipes(files("guidestack_example") / "recipes")
    registry.add_command("mirror-score", command.DESCRIPTION, command.configure, command.run)
