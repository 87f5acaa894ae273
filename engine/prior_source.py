"""Turning what the user typed after ``--prior`` into a loaded :class:`Prior`.

Order: a registered prior name (``gaussian-faces-64``), then each registered backend that claims
the reference (a ``.pt`` file for the Gaussian backend, a folder or a hub id ``owner/name`` for
diffusers).  ``<backend>:<ref>`` (``adm:iddpm-ffhq-512:/path/file.pth``) skips the claims and
hands ``<ref>`` to that backend.  Unknown references get a "did you mean" over the registered
names.
"""

from __future__ import annotations

import difflib

import torch

from .errors import PriorUnavailable
from .prior import Prior
from .registry import Registry

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_prior(
    ref: str, registry: Registry, device: torch.device | str = "cpu", dtype: str = "float32"
) -> Prior:
    """Load the prior named or located by ``ref`` onto ``device``."""
    entry = registry.get("prior", ref)
    if entry is not None:
        prior = entry.obj(device=device, dtype=dtype)
        return prior
    scheme, sep, rest = ref.partition(":")
    explicit = registry.get("prior_backend", scheme) if sep else None
    if explicit is not None:  # "<backend>:<ref>" picks the backend whatever the others claim
        return explicit.obj[1](rest, device=device, dtype=dtype)
    for backend in registry.entries.get("prior_backend", {}).values():
        claims, load = backend.obj
        if claims(ref):
            return load(ref, device=device, dtype=dtype)
    close = difflib.get_close_matches(ref, registry.names("prior"), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise PriorUnavailable(
        f"unknown prior '{ref}'.{hint} Use a registered name ({', '.join(registry.names('prior'))}), "
        "a prior file (.pt), a diffusers model folder, or a hub id such as google/ddpm-ema-celebahq-256."
    )
