"""Face detection with facenet-pytorch's MTCNN: boxes, five landmarks and a probability per face.

MTCNN's three small networks ship inside the facenet-pytorch wheel (``facenet_pytorch/data/
{p,r,o}net.pt``), so detection works offline.  Its cost grows with the pixel count and with the
number of pyramid levels (set by the smallest face sought), so a photo is first shrunk to at most
``detect_side`` pixels on its long side, though never so far that a face of ``min_face`` pixels
drops below 20 detector pixels; boxes and landmarks are mapped back to the photo's pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from guidestack.engine.errors import GuidestackError

from .options import DEFAULT_MIN_FACE, DEFAULT_THRESHOLD

#: long side (pixels) a photo is shrunk to before detection
DEFAULT_DETECT_SIDE = 1024
#: smallest face (detector pixels) the shrinking may leave; MTCNN's own default minimum is 20
_MIN_DETECTOR_FACE = 20.0


class FaceDetectorUnavailable(GuidestackError):
    """The face detector cannot be loaded (facenet-pytorch missing or broken)."""

    exit_code = 2


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` ``(x0, y0, x1, y1)`` and ``landmarks`` ``[5, 2]`` (left eye, right eye,
    nose, left and right mouth corner; ``(x, y)``, float64) in the photo's pixels, and MTCNN's
    probability ``prob``."""

    box: tuple[float, float, float, float]
    landmarks: torch.Tensor
    prob: float

    @property
    def size(self) -> float:
        """The box's shorter side, the face size ``min_face`` is compared with."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(v, 2) for v in self.box],
            "landmarks": [[round(float(v), 2) for v in p] for p in self.landmarks.tolist()],
            "prob": round(self.prob, 4),
        }


@functools.lru_cache(maxsize=4)
def load_detector(device: str = "cpu", double: bool = False) -> Any:
    """MTCNN on ``device`` with its bundled weights (cached: loading takes ~0.1 s), in float64
    if ``double``."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:  # pragma: no cover - facenet-pytorch is a dependency
        raise FaceDetectorUnavailable(
            f"face detection needs facenet-pytorch (pip install facenet-pytorch): {exc}"
        ) from exc
    try:
        detector = MTCNN(keep_all=True, device=torch.device(device))
    except (OSError, RuntimeError) as exc:
        raise FaceDetectorUnavailable(
            f"cannot load MTCNN's bundled weights from facenet-pytorch: {exc}; reinstall it"
        ) from exc
    return detector.double() if double else detector


def detection_scale(height: int, width: int, min_face: float, detect_side: int) -> float:
    """How much the photo is shrunk before detection (1 = not at all)."""
    scale = min(1.0, detect_side / max(height, width))
    return min(1.0, max(scale, _MIN_DETECTOR_FACE / max(min_face, 1e-6)))


def detect_faces(
    image: torch.Tensor,
    *,
    min_face: float = DEFAULT_MIN_FACE,
    detect_side: int = DEFAULT_DETECT_SIDE,
    double: bool = False,
) -> list[Detection]:
    """Every face MTCNN finds in ``image`` (``[3, H, W]`` in [-1, 1]), left to right.

    No probability or size filter is applied here beyond MTCNN's own stage thresholds (0.6, 0.7,
    0.7) and its pyramid's smallest face; see :func:`select_faces`.  ``double`` runs MTCNN in
    float64: about 1.5x slower, but the landmarks then no longer move (by ~1e-4 px in float32)
    with the number of CPU threads, so results that must be reproducible stay so.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    height, width = int(image.shape[1]), int(image.shape[2])
    scale = detection_scale(height, width, min_face, detect_side)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = image.detach().to(torch.float64 if double else torch.float32)
    if size != (height, width):  # shrink first: the full-size photo is touched only once
        pixels = F.interpolate(
            pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
    pixels = (pixels.clamp(-1, 1) + 1.0) * 127.5
    detector = load_detector(str(image.device), double)
    detector.min_face_size = max(12.0, 0.8 * min_face * scale)
    # MTCNN wants [H, W, 3]: a channels-last VIEW of contiguous [3, H, W] data turns back into
    # contiguous [3, H, W] inside it, which makes its many crops and resizes several times faster
    with torch.no_grad():
        boxes, probs, points = detector.detect(pixels.contiguous().permute(1, 2, 0), landmarks=True)
    if boxes is None:
        return []
    fy, fx = size[0] / height, size[1] / width
    found = []
    for box, prob, pts in zip(boxes, probs, points, strict=True):
        b = torch.as_tensor(box.astype("float64"))
        p = torch.as_tensor(pts.astype("float64"))
        # detector pixel centres back to the photo's: q = (p + 0.5) / f - 0.5; box edges: p / f
        landmarks = torch.stack([(p[:, 0] + 0.5) / fx - 0.5, (p[:, 1] + 0.5) / fy - 0.5], -1)
        found.append(
            Detection(
                box=(float(b[0]) / fx, float(b[1]) / fy, float(b[2]) / fx, float(b[3]) / fy),
                landmarks=landmarks,
                prob=float(prob),
            )
        )
    return sorted(found, key=lambda d: (d.box[0] + d.box[2]) / 2)


def select_faces(
    detections: list[Detection],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_face: float = DEFAULT_MIN_FACE,
) -> tuple[list[Detection], list[str]]:
    """Faces with ``prob >= threshold`` and ``size >= min_face``, and one note per face dropped."""
    kept, notes = [], []
    for d in detections:
        x, y = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
        where = f"face at ({x:.0f}, {y:.0f})"
        if d.prob < threshold:
            notes.append(f"{where} skipped: probability {d.prob:.3f} < threshold {threshold}")
        elif d.size < min_face:
            notes.append(f"{where} skipped: {d.size:.0f} px < minimum face size {min_face:g} px")
        else:
            kept.append(d)
    return kept, notes
