"""Turning a prior reference into a loaded :class:`Prior`.

A reference is what the user typed after ``--prior`` or gave to ``guidestack.load_prior``:

1. a :class:`Prior` itself (returned as it is, moved if a device or dtype is asked for);
2. a registered prior name (``gaussian-faces-64``);
3. ``<backend>:<ref>`` (``adm:iddpm-ffhq-512:/path/file.pth``), which hands ``<ref>`` to that
   backend whatever the others claim;
4. any reference a registered backend claims: a ``.pt`` file (Gaussian backend), a folder or a
   hub id ``owner/name`` (diffusers), or an object such as a diffusers ``UNet2DModel`` instance;
5. any other callable ``eps(x_t, t)`` (a function or an ``nn.Module``) with its
   ``alphas_cumprod`` (or a ``scheduler`` holding them) and ``image_size``: an
   :class:`EpsFunctionPrior`.

Unknown names get a "did you mean" over the registered names.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch

from .errors import PriorUnavailable, UsageError
from .prior import EpsFunctionPrior, Prior
from .registry import Registry

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_prior(
    ref: Any,
    registry: Registry,
    device: torch.device | str | None = "cpu",
    dtype: str | torch.dtype = "float32",
    **extra: Any,
) -> Prior:
    """Load the prior named, located or given by ``ref`` (see the module docstring).

    ``device=None`` keeps an object's own device (names and paths load on the CPU).  ``extra``
    goes to object backends and to :class:`EpsFunctionPrior` (``scheduler``, ``alphas_cumprod``,
    ``image_size``, ``channels``, ``name``, ``learned_variance``).
    """
    if isinstance(dtype, torch.dtype):
        dtype = {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if isinstance(ref, Prior):
        return ref if device is None else ref.to(device)
    if isinstance(ref, str | os.PathLike):
        if extra:
            raise UsageError(
                f"{', '.join(sorted(extra))} only apply to a prior given as an object, not to "
                f"{os.fspath(ref)!r}"
            )
        return _load_reference(os.fspath(ref), registry, device or "cpu", dtype)
    for backend in registry.entries.get("prior_backend", {}).values():
        claims, load = backend.obj
        if _claims(claims, ref):
            return load(ref, device=device, dtype=dtype, **extra)
    if callable(ref):
        return _eps_function_prior(ref, device, extra)
    raise PriorUnavailable(
        f"cannot use a {type(ref).__name__} as a prior: give a registered name, a path, a hub "
        "id, a Prior, a diffusers UNet2DModel, or a callable eps(x_t, t) with alphas_cumprod"
    )


def _load_reference(ref: str, registry: Registry, device: Any, dtype: str) -> Prior:
    entry = registry.get("prior", ref)
    if entry is not None:
        return entry.obj(device=device, dtype=dtype)
    scheme, sep, rest = ref.partition(":")
    explicit = registry.get("prior_backend", scheme) if sep else None
    if explicit is not None:  # "<backend>:<ref>" picks the backend whatever the others claim
        return explicit.obj[1](rest, device=device, dtype=dtype)
    for backend in registry.entries.get("prior_backend", {}).values():
        claims, load = backend.obj
        if _claims(claims, ref):
            return load(ref, device=device, dtype=dtype)
    close = difflib.get_close_matches(ref, registry.names("prior"), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise PriorUnavailable(
        f"unknown prior '{ref}'.{hint} Use a registered name ({', '.join(registry.names('prior'))}), "
        "a prior file (.pt), a diffusers model folder, or a hub id such as google/ddpm-ema-celebahq-256."
    )


def _claims(claims: Any, ref: Any) -> bool:
    """A backend's claim; one that cannot even look at this kind of reference declines it."""
    try:
        return bool(claims(ref))
    except (TypeError, AttributeError):
        return False


def _eps_function_prior(fn: Any, device: Any, extra: dict[str, Any]) -> Prior:
    scheduler = extra.pop("scheduler", None)
    abar = extra.pop("alphas_cumprod", None)
    if abar is None and scheduler is not None:
        abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise UsageError(
            "a prior given as a function needs its noise schedule: pass alphas_cumprod= (or a "
            "diffusers scheduler=)"
        )
    if "image_size" not in extra:
        raise UsageError("a prior given as a function needs image_size= (and channels=, default 3)")
    allowed = {"image_size", "channels", "name", "learned_variance"}
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise UsageError(f"unknown prior option(s) {', '.join(unknown)}")
    prior = EpsFunctionPrior(fn, abar, **extra)
    return prior if device is None else prior.to(device)
