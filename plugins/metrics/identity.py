"""Identity similarity: cosine of face embeddings (facenet-pytorch's InceptionResnetV1, VGGFace2).

The embedding weights are not in the facenet-pytorch wheel (it downloads them at first use), so
this metric is only computed when the file is there: ``weights=PATH`` or facenet-pytorch's cache
(``$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt``).  Otherwise the result says
"unavailable" and why; a number is never made up.  Nothing is downloaded.

Inputs are faces aligned to the FFHQ template (as :mod:`guidestack.plugins.faces` and the face
priors frame them).  FaceNet was trained on MTCNN's tight face boxes, so each face is first cut
to where MTCNN's box lies in an aligned crop (:data:`FACE_BOX`, the mean over faces/hq, see
docs/metrics.md), resized to 160x160 and standardised as facenet-pytorch does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from guidestack.engine.errors import InputError
from guidestack.plugins.networks import default_weights_path, load_embedder

from .common import check_pair

#: MTCNN's mean face box in an FFHQ-aligned crop, ``(x0, y0, x1, y1)`` as fractions of the side
FACE_BOX = (0.23, 0.17, 0.78, 0.90)
#: InceptionResnetV1's input side
INPUT_SIZE = 160


@dataclass(frozen=True)
class IdentityResult:
    """``values`` ``[N]`` cosine similarities in [-1, 1] (1 = same embedding), or ``None`` with
    the ``reason`` the metric is unavailable."""

    values: torch.Tensor | None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.values is not None


def weights_path(weights: str | Path | None = None) -> tuple[Path | None, str | None]:
    """``(path, None)`` if the weights file exists, else ``(None, reason)``."""
    path = Path(weights).expanduser() if weights is not None else default_weights_path()
    if path.is_file():
        return path, None
    if weights is not None:
        return None, f"identity weights file {path} does not exist"
    return None, (
        f"facenet-pytorch's VGGFace2 weights are not in its cache ({path}) and are not "
        "downloaded offline; put 20180402-114759-vggface2.pt there or give a weights file"
    )


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float, device: str) -> torch.nn.Module:
    return load_embedder(Path(path), torch.device(device))


def face_crop(faces: torch.Tensor) -> torch.Tensor:
    """The FaceNet input ``[N, 3, 160, 160]`` of aligned faces ``[N, 3, S, S]`` in [-1, 1]."""
    size = faces.shape[-1]
    x0, y0, x1, y1 = (round(v * size) for v in FACE_BOX)
    box = faces[..., y0:y1, x0:x1].float()
    resized = F.interpolate(
        box, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False
    )
    return resized * (127.5 / 128.0)  # facenet's fixed_image_standardization, from [-1, 1]


def embed(faces: torch.Tensor, weights: str | Path) -> torch.Tensor:
    """Unit-norm embeddings ``[N, 512]`` of aligned faces, one face at a time."""
    path = Path(weights).resolve()
    net = _load(str(path), path.stat().st_mtime, str(faces.device))
    crops = face_crop(faces)
    with torch.no_grad():
        return torch.cat([net(crops[i : i + 1]) for i in range(crops.shape[0])])


def identity_cosine(
    x: torch.Tensor, y: torch.Tensor, *, weights: str | Path | None = None
) -> IdentityResult:
    """Cosine similarity of the face embeddings of each pair of aligned faces, if the weights
    are available (see the module docstring)."""
    check_pair(x, y, "identity")
    path, reason = weights_path(weights)
    if path is None:
        return IdentityResult(None, reason)
    try:
        ex, ey = embed(x, path), embed(y, path)
    except InputError as exc:
        return IdentityResult(None, str(exc))
    return IdentityResult(F.cosine_similarity(ex, ey, dim=1).to(x.dtype))
