"""guidestack: a plugin-based, composable guidance engine for diffusion-based image restoration.

The public API (see docs/python.md)::

    import guidestack as gs
    out = gs.run("inpaint", gs.load_prior("gaussian-faces-64"), "face.png", mask="mask.png")

Names are imported on first use, so ``import guidestack`` (and the CLI's start) stays fast; the
registry and recipe functions come from :mod:`guidestack.lookup`, which imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    # running
    "run": "guidestack.api",
    "load_prior": "guidestack.api",
    "load_recipe": "guidestack.lookup",
    "Result": "guidestack.result",
    "Trajectory": "guidestack.result",
    "run_distributed": "guidestack.distributed",
    "shard": "guidestack.distributed",
    "World": "guidestack.distributed",
    # extending
    "guidance": "guidestack.engine.functional",
    "register": "guidestack.lookup",
    "registry": "guidestack.lookup",
    "Stage": "guidestack.engine.stage",
    "StageOptions": "guidestack.engine.stage",
    "GuidanceOptions": "guidestack.engine.stage",
    "hookimpl": "guidestack.engine.hookspecs",
    "Prior": "guidestack.engine.prior",
    "PriorOutput": "guidestack.engine.prior",
    "EpsFunctionPrior": "guidestack.engine.prior",
    "Recipe": "guidestack.engine.recipe",
    "SamplerConfig": "guidestack.engine.config",
    "GuidanceConfig": "guidestack.engine.config",
    "PriorConfig": "guidestack.engine.config",
    "Registry": "guidestack.engine.registry",
    "Observation": "guidestack.engine.context",
    "RunContext": "guidestack.engine.context",
    "StepState": "guidestack.engine.context",
    # finding out
    "list_recipes": "guidestack.lookup",
    "requirements": "guidestack.lookup",
    "pick_device": "guidestack.api",
    "preflight": "guidestack.api",
    "pipeline_hints": "guidestack.api",
    "derive_seed": "guidestack.api",
    "HOOK_API_VERSION": "guidestack.lookup",
    "list_plugins": "guidestack.lookup",
    "explain": "guidestack.lookup",
    "run_hooks": "guidestack.lookup",
    "prior_facts": "guidestack.lookup",
    # images
    "read_image": "guidestack.io.images",
    "save_image": "guidestack.io.outputs",
    # errors
    "GuidestackError": "guidestack.engine.errors",
    "InputError": "guidestack.engine.errors",
    "RecipeError": "guidestack.engine.errors",
    "PluginError": "guidestack.engine.errors",
    "PriorUnavailable": "guidestack.engine.errors",
    "UsageError": "guidestack.engine.errors",
    "NonFiniteError": "guidestack.engine.errors",
    "OutputError": "guidestack.engine.errors",
    "StageError": "guidestack.engine.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'guidestack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
