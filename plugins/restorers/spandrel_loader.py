"""Loading restoration networks with spandrel: safe reading, architecture detection, errors.

spandrel (MIT; the model loader of chaiNNer and ComfyUI) recognises a network's architecture
and hyper-parameters from its state dict alone.  guidestack reads the file itself, so no file
can run code: ``.safetensors`` through safetensors, everything else through
``torch.load(weights_only=True)``; TorchScript programs are not read here (the ``torch-module``
restorer takes them).  The detection registry is spandrel's main one plus, when the optional
``guidestack[codeformer]`` extra (``spandrel-extra-arches``) is installed, its extra
architectures (CodeFormer, Restormer...: non-commercial or copyleft licences), added to a copy so
spandrel's global registry is left alone.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from guidestack.engine.errors import InputError

SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
EXTRA_DISTRIBUTION = "spandrel-extra-arches"
EXTRA_HINT = "pip install 'guidestack[codeformer]' (spandrel-extra-arches; non-commercial licences)"


def import_spandrel():
    """``spandrel``, imported without the deprecation notices its modules print at import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import spandrel
    return spandrel


@functools.cache
def registry():
    """spandrel's detection registry, with the extra architectures when they are installed."""
    spandrel = import_spandrel()
    reg = spandrel.MAIN_REGISTRY.copy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import spandrel_extra_arches
    except ImportError:
        return reg
    reg.add(*spandrel_extra_arches.EXTRA_REGISTRY, ignore_duplicates=True)
    return reg


def extra_installed() -> bool:
    try:
        metadata.distribution(EXTRA_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


def architectures() -> list[str]:
    """The architecture ids spandrel can detect here, in detection order."""
    return [support.architecture.id for support in registry().architectures("detection")]


def read_weights(path: Path) -> dict[str, Any]:
    """The (possibly wrapped) state dict in ``path``, read without executing anything."""
    if not path.is_file():
        raise InputError(f"spandrel restorer: weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"spandrel restorer: {path} is not a readable safetensors file: {exc}"
            ) from exc
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files written before torch 1.6 cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"spandrel restorer: {path} cannot be read as plain weights "
            f"(torch.load(weights_only=True): {type(exc).__name__}: {str(exc)[:300]}). guidestack "
            "never unpickles code from a weights file: save the state dict with torch.save("
            "model.state_dict()) or as .safetensors (TorchScript files: use the torch-module "
            "restorer)."
        ) from exc
    if not isinstance(obj, Mapping):
        raise InputError(
            f"spandrel restorer: {path} holds a {type(obj).__name__}, not a state dict"
        )
    return dict(obj)


def unsupported_message(path: Path, state: Mapping[str, Any]) -> str:
    spandrel = import_spandrel()

    keys = [k for k in state if isinstance(k, str)]
    extra = "" if extra_installed() else f"; more (CodeFormer, Restormer...) with {EXTRA_HINT}"
    return (
        f"spandrel restorer: {path} is not an architecture spandrel {spandrel.__version__} "
        f"recognises ({len(keys)} keys, e.g. {', '.join(keys[:4])}). Supported: "
        f"{', '.join(sorted(architectures(), key=str.lower))}{extra}. For another network use "
        "the torch-module restorer (TorchScript, torch.export, or a registered architecture)."
    )


def load_descriptor(state: Mapping[str, Any], path: Path):
    """Detect the architecture of ``state`` and build the network (a spandrel descriptor)."""
    spandrel = import_spandrel()

    try:
        model = registry().load(dict(state))
    except spandrel.UnsupportedModelError as exc:
        raise InputError(unsupported_message(path, state)) from exc
    except (RuntimeError, KeyError, ValueError, AssertionError, IndexError) as exc:
        raise InputError(
            f"spandrel restorer: {path} looks like {_guess(state) or 'a known architecture'} "
            f"but does not load: {type(exc).__name__}: {str(exc)[:400]}"
        ) from exc
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise InputError(
            f"spandrel restorer: {path} is a {model.architecture.name} network "
            f"({model.purpose}), which needs a mask; restorers take an image only"
        )
    return model.eval()


def _guess(state: Mapping[str, Any]) -> str | None:
    canonical = import_spandrel().canonicalize_state_dict(dict(state))
    for support in registry().architectures("detection"):
        try:
            if support.detect(canonical):
                return support.architecture.name
        except Exception:  # noqa: BLE001, S112 - a detector that cannot read this state
            continue
    return None


_LOADED: dict[tuple[Any, ...], Any] = {}


def load_file(path: str | Path):
    """The network in ``path`` (loaded once per file version and process)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"spandrel restorer: weights file not found: {p}")
    stat = p.stat()
    key = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        model = load_descriptor(read_weights(p), p)
        model.model.requires_grad_(False)
        _LOADED[key] = model
    return _LOADED[key]
