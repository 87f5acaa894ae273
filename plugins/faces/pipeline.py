"""Restoring the faces in a whole photo: detect, align to the prior's template, restore, paste back.

The photo itself (the background) is only resized, by a pluggable upsampler, to ``upscale`` times
its size; each face found is cut out along the FFHQ template at the prior's resolution, all faces
go to ``restore_fn`` as one batch, and each restored face is warped back onto the resized photo
and blended in with a feathered mask.  A photo without a usable face comes back resized, with a
warning saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kornia
import torch

from guidestack.engine.pipeline import Crop, Pipeline, PipelineResult, RestoreCrops
from guidestack.engine.upsampler import MODES, resize

from .align import (
    affine_scale,
    align_face,
    compose_affine,
    feather_mask,
    invert_affine,
    paste_face,
    resize_affine,
    warp_footprint,
)
from .detect import (
    DEFAULT_DETECT_SIDE,
    DEFAULT_MIN_FACE,
    DEFAULT_THRESHOLD,
    Detection,
    detect_faces,
    select_faces,
)
from .options import MAX_SIDE as MAX_SIDE  # re-exported
from .options import FacesOptions

RestoreFn = Callable[[torch.Tensor], torch.Tensor]
#: an upsampler: ``images [N, 3, h, w]`` and ``size (H, W)`` -> ``[N, 3, H, W]`` in [-1, 1]
#: (an :class:`~guidestack.engine.upsampler.Upsampler`, or a plain interpolation name)
UpsampleFn = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
#: photos at least this large (longest side) are checked for several faces when run without
#: the pipeline, on a copy this large
HINT_SIDE = 256
#: a restored face whose sharpness (variance of the Laplacian) falls below this share of the
#: original's is reported as blurrier than the input
BLURRIER = 0.5


def resolve_upsampler(spec: str | UpsampleFn) -> UpsampleFn:
    """A callable, or the name of an interpolation (``bicubic``, ``bilinear``, ``nearest``)."""
    if callable(spec):
        return spec
    if spec not in MODES:
        raise ValueError(f"unknown upsampler '{spec}'; known: {', '.join(MODES)}")
    return lambda images, size: resize(images, size, spec)


def _side_in_output(to_crop: torch.Tensor, size: int) -> int:
    """How many output pixels the aligned crop's side spans (crop pixels per output pixel is
    the map's scale)."""
    return max(1, round(size / affine_scale(to_crop)))


def sharpness(image: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    """Variance of the Laplacian of the luminance (a no-reference sharpness measure), over the
    pixels ``weight`` selects (``[1, H, W]`` in [0, 1]), or all of them."""
    gray = image.mean(dim=0, keepdim=True)[None]
    lap = kornia.filters.laplacian(gray, 3)[0, 0, 1:-1, 1:-1]
    w = torch.ones_like(lap) if weight is None else weight[0, 1:-1, 1:-1]
    total = w.sum().clamp_min(1e-8)
    mean = (w * lap).sum() / total
    return float((w * (lap - mean) ** 2).sum() / total)


@dataclass
class FaceRecord:
    """One face: what ``restore_fn`` saw (``aligned``) and gave back (``restored``), both
    ``[3, S, S]`` in [-1, 1]; where it is in the INPUT photo (``box``, ``landmarks`` ``[5, 2]``);
    MTCNN's ``prob``; ``matrix`` ``[2, 3]`` maps input-photo pixels to aligned-crop pixels."""

    aligned: torch.Tensor
    restored: torch.Tensor
    box: tuple[float, float, float, float]
    landmarks: torch.Tensor
    prob: float
    matrix: torch.Tensor
    #: side of the face as pasted into the output (larger than ``size`` when upsampled)
    pasted_side: int = 0
    #: variance of the Laplacian after / before, over the face's footprint
    sharpness_ratio: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        info = Detection(self.box, self.landmarks, self.prob).to_dict()
        info["size"] = int(self.aligned.shape[-1])
        info["pasted_size"] = int(self.pasted_side or self.aligned.shape[-1])
        info["sharpness_ratio"] = round(float(self.sharpness_ratio), 4)
        info["blurrier"] = bool(self.sharpness_ratio < BLURRIER)
        return info


@dataclass
class FacesResult:
    """``image``: the output photo ``[3, upscale H, upscale W]``; ``faces`` in left-to-right
    order; ``warnings`` for run.json (e.g. no face found); ``skipped``: one note per detection
    that was not restored (below the threshold or too small)."""

    image: torch.Tensor
    faces: list[FaceRecord]
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """What run.json records."""
        return {
            "faces": [face.to_dict() for face in self.faces],
            "skipped": list(self.skipped),
            "warnings": list(self.warnings),
        }


def restore_faces(
    image: torch.Tensor,
    restore_fn: RestoreFn,
    size: int,
    *,
    min_face: float = DEFAULT_MIN_FACE,
    threshold: float = DEFAULT_THRESHOLD,
    upsampler: str | UpsampleFn = "bicubic",
    face_upsampler: str | UpsampleFn | None = None,
    upscale: int = 1,
    detect_side: int = DEFAULT_DETECT_SIDE,
    detections: list[Detection] | None = None,
) -> FacesResult:
    """Restore every face in ``image`` (``[3, H, W]`` in [-1, 1]) and paste it back.

    ``restore_fn`` gets all aligned faces as one batch ``[N, 3, size, size]`` and must return the
    restored batch of the same shape (it is not called when no face is found).  ``size`` is the
    prior's resolution.  Faces need MTCNN probability ``>= threshold`` and a box of at least
    ``min_face`` pixels (shorter side).  The output is ``upscale`` times the input's size; the
    background is resized with ``upsampler``.  A restored face that is larger in the output
    than ``size`` is first brought to (about) its size there with ``face_upsampler`` (default:
    ``upsampler``), then warped back; each face's sharpness is compared with the original's and
    a much blurrier one is reported.  ``detections`` replaces detection (e.g. landmarks from
    another detector).
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    if int(upscale) != upscale or upscale < 1:
        raise ValueError(f"upscale must be a positive integer, got {upscale}")
    upscale = int(upscale)
    height, width = int(image.shape[1]), int(image.shape[2])
    found = (
        detect_faces(image, min_face=min_face, detect_side=detect_side)
        if detections is None
        else list(detections)
    )
    kept, skipped = select_faces(found, threshold=threshold, min_face=min_face)
    background = resolve_upsampler(upsampler)
    faces_up = background if face_upsampler is None else resolve_upsampler(face_upsampler)
    # a copy: the faces are pasted into it in place, and an upsampler may return its input
    canvas = background(image[None], (height * upscale, width * upscale))[0].clone()
    expected = (3, height * upscale, width * upscale)
    if tuple(canvas.shape) != expected:
        raise ValueError(f"upsampler returned {tuple(canvas.shape)}, expected {expected}")
    if not kept:
        why = f"; {len(skipped)} detection(s) skipped: " + "; ".join(skipped) if skipped else ""
        warning = (
            f"no face found (threshold {threshold}, minimum face {min_face:g} px){why}; "
            "the image was copied through" + (f" (resized x{upscale})" if upscale > 1 else "")
        )
        return FacesResult(canvas, [], [warning], skipped)

    crops = [align_face(image, d.landmarks, size) for d in kept]
    aligned = torch.stack([crop for crop, _ in crops])
    restored = restore_fn(aligned.clone())
    if not isinstance(restored, torch.Tensor) or tuple(restored.shape) != tuple(aligned.shape):
        got = tuple(restored.shape) if isinstance(restored, torch.Tensor) else type(restored)
        raise ValueError(f"restore_fn returned {got} for faces of shape {tuple(aligned.shape)}")
    restored = restored.detach().to(device=image.device, dtype=image.dtype).clamp(-1.0, 1.0)

    to_input = invert_affine(resize_affine((height, width), expected[1:]))  # output -> input
    original = canvas.clone()
    faces, warnings = [], []
    for i, (d, (crop, matrix), face) in enumerate(zip(kept, crops, restored, strict=True)):
        to_crop = compose_affine(matrix, to_input)  # output photo -> aligned crop
        side = _side_in_output(to_crop, size)
        if side > size:  # paste at the face's own size: upsample first, then warp
            face = faces_up(face[None], (side, side))[0].to(canvas.dtype)
            to_crop = compose_affine(resize_affine((size, size), (side, side)), to_crop)
        mask = feather_mask(face.shape[-1], dtype=canvas.dtype, device=canvas.device)
        paste_face(canvas, face, to_crop, mask)
        record = FaceRecord(crop, restored[i], d.box, d.landmarks, d.prob, matrix)
        record.pasted_side = face.shape[-1]
        footprint = warp_footprint(mask, to_crop, canvas.shape[-2:])
        before, after = sharpness(original, footprint), sharpness(canvas, footprint)
        record.sharpness_ratio = after / max(before, 1e-12)
        if record.sharpness_ratio < BLURRIER:
            warnings.append(
                f"face {i}: the restored face is blurrier than the original (sharpness "
                f"x{record.sharpness_ratio:.2f}); a stronger prior or another recipe may do better"
            )
        faces.append(record)
    return FacesResult(canvas, faces, warnings, skipped)


def save_faces(result: FacesResult, folder: str | Path) -> list[Path]:
    """Write ``folder/face{i:02d}_aligned.png`` and ``face{i:02d}_restored.png`` per face."""
    from guidestack.io.outputs import save_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, face in enumerate(result.faces):
        written.append(save_image(face.aligned, folder / f"face{i:02d}_aligned.png"))
        written.append(save_image(face.restored, folder / f"face{i:02d}_restored.png"))
    return written


class FacesPipeline(Pipeline):
    """Every face of an unaligned photo: MTCNN detection, alignment to the prior's template,
    one batched run over all faces, each face brought to its own size in the photo by the run's
    upsampler and warped back with a feathered seam."""

    name = "faces"
    description = "restore every face of a photo: detect (MTCNN), align, restore, paste back"
    Options = FacesOptions

    def hint(self, photo: torch.Tensor) -> str | None:
        """Several faces in a photo run as one image: suggest ``--faces`` (detection on a copy of
        at most :data:`HINT_SIDE` pixels; photos smaller than that are skipped)."""
        if max(photo.shape[-2:]) < HINT_SIDE:
            return None
        try:
            found = detect_faces(photo, min_face=self.options.min_face, detect_side=HINT_SIDE)
        except Exception:  # noqa: BLE001 - a hint must never fail a run
            return None
        kept, _ = select_faces(
            found, threshold=self.options.threshold, min_face=self.options.min_face
        )
        if len(kept) < 2:
            return None
        return (
            f"{len(kept)} faces found in this photo; to restore each of them, run with --faces "
            "(Python: faces=True)"
        )

    def run(
        self,
        photo: torch.Tensor,
        restore: RestoreCrops,
        size: int,
        upsampler: UpsampleFn,
        find_upsampler: Callable[[str], UpsampleFn],
    ) -> PipelineResult:
        o = self.options
        background = upsampler if o.background_upsampler is None else None
        if background is None:
            background = find_upsampler(o.background_upsampler)
        found = restore_faces(
            photo,
            restore,
            size,
            min_face=o.min_face,
            threshold=o.threshold,
            upsampler=background,
            face_upsampler=upsampler,
            upscale=o.upscale,
        )
        crops = [Crop(face.aligned, face.restored, face.to_dict()) for face in found.faces]
        return PipelineResult(found.image, crops, list(found.warnings), found.report())
