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

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from guidestack.engine.pipeline import Crop, Pipeline, PipelineOptions, PipelineResult, RestoreCrops

from .align import (
    align_face,
    compose_affine,
    feather_mask,
    invert_affine,
    paste_face,
    resize_affine,
)
from .detect import (
    DEFAULT_DETECT_SIDE,
    DEFAULT_MIN_FACE,
    DEFAULT_THRESHOLD,
    Detection,
    detect_faces,
    select_faces,
)

#: an upsampler takes ``[N, 3, H, W]`` in [-1, 1] and an integer factor, returns ``[N, 3, fH, fW]``
Upsampler = Callable[[torch.Tensor, int], torch.Tensor]
RestoreFn = Callable[[torch.Tensor], torch.Tensor]
#: the largest face side accepted as --min-face (the longest side an input may have)
MAX_SIDE = 16384


def _interpolating(mode: str) -> Upsampler:
    def upsample(image: torch.Tensor, factor: int) -> torch.Tensor:
        if factor == 1:
            return image.clone()
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        out = F.interpolate(image, scale_factor=factor, mode=mode, **kwargs)
        return out.clamp(-1.0, 1.0)  # bicubic overshoots at edges

    upsample.__name__ = f"{mode}_upsampler"
    return upsample


#: built-in background upsamplers; add more with :func:`register_upsampler` or pass a callable
UPSAMPLERS: dict[str, Upsampler] = {
    name: _interpolating(name) for name in ("bicubic", "bilinear", "nearest")
}


def register_upsampler(name: str, upsampler: Upsampler) -> None:
    """Make ``upsampler`` available by ``name`` (e.g. for a recipe or ``--upsampler``)."""
    if name in UPSAMPLERS:
        raise ValueError(f"an upsampler named '{name}' exists already")
    UPSAMPLERS[name] = upsampler


def resolve_upsampler(spec: str | Upsampler) -> Upsampler:
    if callable(spec):
        return spec
    try:
        return UPSAMPLERS[spec]
    except KeyError:
        raise ValueError(
            f"unknown upsampler '{spec}'; known: {', '.join(sorted(UPSAMPLERS))}"
        ) from None


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

    def to_dict(self) -> dict[str, Any]:
        info = Detection(self.box, self.landmarks, self.prob).to_dict()
        info["size"] = int(self.aligned.shape[-1])
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
    upsampler: str | Upsampler = "bicubic",
    upscale: int = 1,
    detect_side: int = DEFAULT_DETECT_SIDE,
    detections: list[Detection] | None = None,
) -> FacesResult:
    """Restore every face in ``image`` (``[3, H, W]`` in [-1, 1]) and paste it back.

    ``restore_fn`` gets all aligned faces as one batch ``[N, 3, size, size]`` and must return the
    restored batch of the same shape (it is not called when no face is found).  ``size`` is the
    prior's resolution.  Faces need MTCNN probability ``>= threshold`` and a box of at least
    ``min_face`` pixels (shorter side).  The output is ``upscale`` times the input's size; the
    background is resized with ``upsampler`` (a name in :data:`UPSAMPLERS` or a callable).
    ``detections`` replaces detection (e.g. landmarks from another detector).
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
    canvas = resolve_upsampler(upsampler)(image[None], upscale)[0]
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
    mask = feather_mask(size, dtype=canvas.dtype, device=canvas.device)
    faces = []
    for d, (crop, matrix), face in zip(kept, crops, restored, strict=True):
        paste_face(canvas, face, compose_affine(matrix, to_input), mask)
        faces.append(FaceRecord(crop, face, d.box, d.landmarks, d.prob, matrix))
    return FacesResult(canvas, faces, [], skipped)


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


class FacesOptions(PipelineOptions):
    min_face: float = Field(
        DEFAULT_MIN_FACE, gt=0, le=MAX_SIDE, description="smallest face side in pixels to restore"
    )
    threshold: float = Field(
        DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="MTCNN probability a face needs"
    )
    upscale: int = Field(
        1, ge=1, le=8, description="output size factor (the background is upsampled)"
    )
    upsampler: str = Field(
        "bicubic", description="background upsampler: bicubic, bilinear, nearest"
    )

    @field_validator("upsampler")
    @classmethod
    def _known_upsampler(cls, value: str) -> str:
        if value not in UPSAMPLERS:
            raise ValueError(f"unknown upsampler '{value}'; known: {', '.join(sorted(UPSAMPLERS))}")
        return value


class FacesPipeline(Pipeline):
    """Every face of an unaligned photo: MTCNN detection, alignment to the prior's template,
    one batched run over all faces, warp back with a feathered seam."""

    name = "faces"
    description = "restore every face of a photo: detect (MTCNN), align, restore, paste back"
    Options = FacesOptions

    def run(self, photo: torch.Tensor, restore: RestoreCrops, size: int) -> PipelineResult:
        o = self.options
        found = restore_faces(
            photo,
            restore,
            size,
            min_face=o.min_face,
            threshold=o.threshold,
            upsampler=o.upsampler,
            upscale=o.upscale,
        )
        crops = [Crop(face.aligned, face.restored, face.to_dict()) for face in found.faces]
        return PipelineResult(found.image, crops, list(found.warnings), found.report())
