"""Reading official checkpoint files into our own modules, with messages a user can act on.

Official checkpoints come wrapped in many ways (a bare state dict, ``{"state_dict": ...}``,
``{"params_ema": ...}``, keys prefixed ``module.`` by DataParallel).  :func:`read_state_dict`
unwraps all of them with ``weights_only=True`` (a checkpoint cannot run code) and memory-maps
the file when torch can, so peeking at a 600 MB file's keys costs milliseconds.
:func:`check_shapes` compares a state dict with a module key by key so a wrong file or preset
is reported precisely instead of as torch's wall of text.  Where files live and how they are
downloaded is :mod:`guidestack.plugins.weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from guidestack.engine.errors import GuidestackError, PriorUnavailable

# where named models' files live and how they are fetched: one module for every user
from .weights import MODELS_ENV, ModelCard, missing_file_message, models_dir  # noqa: F401

#: keys under which training frameworks store the weights (first match wins; EMA first)
WRAPPER_KEYS = ("params_ema", "state_dict", "params", "model", "ema", "net", "generator")


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside ``obj``, without a common ``module.`` prefix."""
    for _ in range(3):  # wrappers nest at most twice in practice ({"state_dict": {"params": ...}})
        if _is_tensor_dict(obj):
            break
        if not isinstance(obj, Mapping):
            raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict")
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ValueError(
                f"{source} is a dict with keys {sorted(map(str, obj))[:8]} but none holds the "
                f"weights (looked for {', '.join(WRAPPER_KEYS)})"
            )
        obj = inner
    if not _is_tensor_dict(obj):
        raise ValueError(f"{source} does not hold a state dict of tensors")
    state = dict(obj)  # type: ignore[arg-type]
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def read_state_dict(
    path: str | Path, error: type[GuidestackError] = PriorUnavailable
) -> dict[str, torch.Tensor]:
    """Load the weights in ``path`` on the CPU (memory-mapped when possible)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise error(f"checkpoint file not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files written before torch 1.6 cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise error(
            f"{path} is not a readable torch checkpoint: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return unwrap_state_dict(obj, str(path))
    except ValueError as exc:
        raise error(str(exc)) from exc


def peek_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Key -> shape of a checkpoint, or ``None`` if ``path`` is not one (never raises)."""
    try:
        state = read_state_dict(path)
    except GuidestackError:
        return None
    return {k: tuple(v.shape) for k, v in state.items()}


def module_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def shape_problems(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    optional: tuple[str, ...] = (),
) -> list[str]:
    """Human-readable differences between two key -> shape maps (empty when they agree).

    Keys ending with one of ``optional`` (derived buffers some writers omit) may be missing.
    """
    missing = [k for k in expected if k not in found and not k.endswith(optional)]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        examples = ", ".join(
            f"{k}: file {list(found[k])} vs model {list(expected[k])}" for k in wrong[:3]
        )
        problems.append(f"{len(wrong)} shape mismatches (e.g. {examples})")
    return problems


def fit_state_dict(
    expected: Mapping[str, tuple[int, ...]],
    state: Mapping[str, torch.Tensor],
    prefixes: tuple[str, ...] = ("generator.", "net_g.", "model."),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` as is, or with one wrapper prefix removed, whichever holds every expected key
    with the expected shape; returns it and the extra keys it carries (ignored, as the official
    loaders' ``strict=False`` does).  Falls back to ``state`` unchanged (the caller then reports
    the differences)."""
    candidates = [dict(state)]
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            candidates.append(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            )
    for candidate in candidates:
        if all(
            k in candidate and tuple(candidate[k].shape) == tuple(s) for k, s in expected.items()
        ):
            extra = [k for k in candidate if k not in expected]
            return {k: v for k, v in candidate.items() if k in expected}, extra
    return dict(state), []


def matches(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    optional: tuple[str, ...] = (),
) -> bool:
    return not shape_problems(expected, found, optional)


def load_exact(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    error: type[GuidestackError] = PriorUnavailable,
    optional: tuple[str, ...] = (),
) -> nn.Module:
    """Load ``state`` into ``module`` (built on any device, ``meta`` included) or raise ``error``
    saying exactly what differs.  Tensors are assigned, not copied, so a memory-mapped file is
    not duplicated in memory; floating tensors are cast to float32."""
    problems = shape_problems(
        module_shapes(module), {k: tuple(v.shape) for k, v in state.items()}, optional
    )
    if problems:
        raise error(f"{what}: the file does not fit the architecture: " + "; ".join(problems))
    own = module.state_dict()
    fitted = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for key in own:  # derived buffers the file may omit: keep ours, materialised on the CPU
        if key not in fitted:
            fitted[key] = own[key] if own[key].device.type != "meta" else None  # type: ignore[assignment]
    if any(v is None for v in fitted.values()):
        missing = [k for k, v in fitted.items() if v is None]
        raise error(f"{what}: the file lacks {', '.join(missing[:3])} and they cannot be derived")
    module.load_state_dict(fitted, strict=True, assign=True)
    return module
