"""The plugin module named by the ``guidestack`` entry point: it declares the hook API it was
written against and registers its stages, its recipe folder and a command."""

from __future__ import annotations

from importlib.resources import files

from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.registry import Registry

from . import command
from .ilvr import LowPassConsistency
from .symmetry import MirrorSymmetry

#: the guidestack hook API this plugin was written against; a guidestack that provides an
#: older API skips the plugin, saying why, instead of failing mid-run
hook_api_version = 1


@hookimpl
def register(registry: Registry) -> None:
    registry.add_stage(MirrorSymmetry)
    registry.add_stage(LowPassConsistency)
    registry.add_recipes(files("guidestack_example") / "recipes")
    registry.add_command("mirror-score", command.DESCRIPTION, command.configure, command.run)
