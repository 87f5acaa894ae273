"""Face alignment: the FFHQ five-point template, similarity fits, warps both ways, the blend mask.

Coordinates are pixel coordinates with pixel CENTRES at integers (OpenCV's and kornia's
``align_corners=True`` convention): the top-left pixel covers ``[-0.5, 0.5]^2``.  Points are
``(x, y)``.  An affine matrix ``M`` (``[2, 3]``) maps a point ``p`` of its source to
``M[:, :2] @ p + M[:, 2]`` in its destination; :func:`warp_image` fills the destination by
sampling the source at ``M^-1 q`` (so ``M`` is the same matrix OpenCV's ``warpAffine`` takes).

The template is the one every FFHQ-based face restorer aligns with (facexlib's
``FaceRestoreHelper``, used by GFPGAN and CodeFormer): five points in a 512x512 crop, left eye,
right eye, nose tip, left and right mouth corner, in image order (left = smaller x).  It sits where
FFHQ's own cropping rule puts a typical face (docs/faces.md derives it): eyes at 47% of the height,
eye distance 0.246 of the side, mouth 0.256 of the side below the eyes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

#: facexlib's FFHQ template, ``(x, y)`` in a 512x512 crop (pixel centres at integers)
FFHQ_TEMPLATE_512 = (
    (192.98138, 239.94708),  # left eye (image left)
    (318.90277, 240.19360),  # right eye
    (256.63416, 314.01935),  # nose tip
    (201.26117, 371.41043),  # left mouth corner
    (313.08905, 371.15118),  # right mouth corner
)
TEMPLATE_SIZE = 512


def face_template(
    size: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The template ``[5, 2]`` for a ``size`` x ``size`` crop.

    Scaled about pixel EDGES, ``(p + 0.5) * size / 512 - 0.5``, as image resizing maps pixels, so
    a 512 crop resized to ``size`` has its landmarks exactly on the scaled template.
    """
    points = torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float64)
    scaled = (points + 0.5) * (size / TEMPLATE_SIZE) - 0.5
    return scaled.to(device=device, dtype=dtype)


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) ``src -> dst``.

    Umeyama (1991): with centred point sets, ``Sigma = dst_c^T src_c / n = U S V^T`` and
    ``D = diag(1, sign(det U det V))``, the best rotation is ``R = U D V^T``, the scale
    ``trace(S D) / var(src)`` and the translation ``mu_dst - s R mu_src``.  Minimises
    ``sum |s R src_i + t - dst_i|^2``.  ``src``/``dst`` are ``[P, 2]`` or ``[N, P, 2]``; returns
    ``[2, 3]`` or ``[N, 2, 3]`` float64.
    """
    single = src.dim() == 2
    s = src.to(torch.float64).reshape(-1, src.shape[-2], 2)
    d = dst.to(device=src.device, dtype=torch.float64).reshape(-1, dst.shape[-2], 2)
    d = d.expand(s.shape[0], -1, -1) if d.shape[0] == 1 else d
    if s.shape != d.shape or s.shape[1] < 2:
        raise ValueError(
            f"need matching point sets of >= 2 points, got {src.shape} and {dst.shape}"
        )
    mu_s, mu_d = s.mean(1, keepdim=True), d.mean(1, keepdim=True)
    sc, dc = s - mu_s, d - mu_d
    var_s = sc.square().sum((1, 2)) / s.shape[1]
    if bool((var_s <= 0).any()):
        raise ValueError("source points coincide; a similarity needs distinct points")
    sigma = dc.transpose(1, 2) @ sc / s.shape[1]
    u, sv, vh = torch.linalg.svd(sigma)
    sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    diag = torch.stack([torch.ones_like(sign), sign], -1)
    rot = u @ torch.diag_embed(diag) @ vh
    scale = (sv * diag).sum(-1) / var_s
    lin = scale[:, None, None] * rot
    trans = mu_d.transpose(1, 2) - lin @ mu_s.transpose(1, 2)
    out = torch.cat([lin, trans], -1)
    return out[0] if single else out


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``points`` (``[..., P, 2]``) mapped by ``matrix`` (``[..., 2, 3]``)."""
    m = matrix.to(points.dtype)
    return points @ m[..., :, :2].transpose(-1, -2) + m[..., None, :, 2]


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of ``[..., 2, 3]`` affine maps."""
    lin = torch.linalg.inv(matrix[..., :, :2])
    return torch.cat([lin, -(lin @ matrix[..., :, 2:])], -1)


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``outer o inner`` (apply ``inner`` first) for ``[..., 2, 3]`` maps."""
    lin = outer[..., :, :2] @ inner[..., :, :2]
    return torch.cat([lin, outer[..., :, :2] @ inner[..., :, 2:] + outer[..., :, 2:]], -1)


def affine_scale(matrix: torch.Tensor) -> float:
    """Destination pixels per source pixel (``sqrt |det|``) of one ``[2, 3]`` map."""
    return math.sqrt(abs(float(torch.linalg.det(matrix[:, :2].double()))))


def resize_affine(old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """The ``[2, 3]`` map from an ``old = (h, w)`` image to its resize to ``new``.

    Resizing maps pixel edges to edges: ``q = (p + 0.5) * new / old - 0.5`` per axis.
    """
    fy, fx = new[0] / old[0], new[1] / old[1]
    return torch.tensor([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]], dtype=torch.float64)


def _translation(dx: float, dy: float) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=torch.float64)


def footprint(matrix: torch.Tensor, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` in the source of a ``size = (h, w)`` destination
    (its pixel edges) under the destination-from-source map ``matrix``."""
    h, w = size
    corners = torch.tensor(
        [[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]], dtype=torch.float64
    )
    src = apply_affine(invert_affine(matrix.double()), corners)
    return (
        float(src[:, 0].min()),
        float(src[:, 1].min()),
        float(src[:, 0].max()),
        float(src[:, 1].max()),
    )


def warp_image(
    src: torch.Tensor,
    matrix: torch.Tensor,
    size: tuple[int, int],
    *,
    mode: str = "bicubic",
    padding_mode: str = "reflection",
) -> torch.Tensor:
    """Warp ``src`` (``[C, H, W]``) by ``matrix`` (source -> destination) into ``size = (h, w)``.

    Only the part of ``src`` the destination sees is touched (a face in a 20-megapixel photo costs
    what the face costs), and when the warp shrinks (``sqrt |det| < 1``) that part is first resized
    with an antialiasing filter to the destination's scale, since point sampling alone would
    alias.  Bicubic by default: a crop and its warp back lose 2-5 dB less PSNR than with bilinear
    (docs/faces.md); it may overshoot, so clamp where that matters.  ``padding_mode``
    (``reflection``, ``border``, ``zeros``) fills what lies outside ``src``.
    """
    if src.dim() != 3:
        raise ValueError(f"src must be [C, H, W], got {tuple(src.shape)}")
    matrix = matrix.to(torch.float64).cpu()
    _, height, width = src.shape
    scale = affine_scale(matrix)
    margin = 2.0 + 2.0 / min(scale, 1.0)
    x0, y0, x1, y1 = footprint(matrix, size)
    left, top = max(0, math.floor(x0 - margin)), max(0, math.floor(y0 - margin))
    right, bottom = min(width, math.ceil(x1 + margin) + 1), min(height, math.ceil(y1 + margin) + 1)
    if right - left < 2 or bottom - top < 2:  # sees (almost) nothing of src: pad from all of it
        left, top, right, bottom = 0, 0, width, height
    crop = src[:, top:bottom, left:right]
    m = compose_affine(matrix, _translation(left, top))
    if scale < 1.0:
        old = (bottom - top, right - left)
        new = (max(2, round(old[0] * scale)), max(2, round(old[1] * scale)))
        if new != old:
            crop = F.interpolate(
                crop[None], size=new, mode="bicubic", antialias=True, align_corners=False
            )[0]
            m = compose_affine(m, invert_affine(resize_affine(old, new)))
    out = warp_affine(
        crop[None],
        m[None].to(device=src.device, dtype=src.dtype),
        dsize=size,
        mode=mode,
        padding_mode=padding_mode,
        align_corners=True,
    )
    return out[0]


def feather_mask(
    size: int,
    *,
    margin: float = 0.02,
    feather: float = 0.1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[1, size, size]`` blend weights in template space: 1 in the middle, falling smoothly
    (smoothstep) to 0 over ``feather`` of the side after an outer ``margin`` of 0.

    The margin hides the crop's edge pixels (padded or interpolated from outside the photo); the
    ramp spreads the seam over ~10% of the face so a colour or blur mismatch shows no edge.
    """
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    edge = torch.minimum(centres, 1.0 - centres)
    ramp = ((edge - margin) / max(feather, 1e-12)).clamp(0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)
    mask = torch.minimum(ramp[:, None], ramp[None, :])
    return mask[None].to(device=device, dtype=dtype)


def align_face(
    image: torch.Tensor,
    landmarks: torch.Tensor,
    size: int,
    *,
    padding_mode: str = "reflection",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop one face: ``(aligned [C, size, size], matrix [2, 3] image -> crop)``.

    ``landmarks`` are the five points ``[5, 2]`` in ``image`` (``[C, H, W]``) in template order.
    """
    matrix = estimate_similarity(landmarks, face_template(size))
    crop = warp_image(image, matrix, (size, size), padding_mode=padding_mode)
    return crop.clamp(-1.0, 1.0), matrix


def warp_footprint(
    mask: torch.Tensor, matrix: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """The crop's ``mask`` (``[1, S, S]``, aligned by ``matrix``: canvas -> crop) warped onto a
    canvas of ``shape = (H, W)``: ``[1, H, W]`` weights, 0 outside the face."""
    height, width = int(shape[0]), int(shape[1])
    out = torch.zeros(1, height, width, dtype=mask.dtype, device=mask.device)
    size = mask.shape[-1]
    x0, y0, x1, y1 = footprint(matrix.to(torch.float64).cpu(), (size, size))
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    right, bottom = min(width, math.ceil(x1) + 1), min(height, math.ceil(y1) + 1)
    if right <= left or bottom <= top:
        return out
    back = invert_affine(matrix.to(torch.float64).cpu())
    to_region = compose_affine(_translation(-left, -top), back)
    warped = warp_image(mask, to_region, (bottom - top, right - left), padding_mode="zeros")
    out[:, top:bottom, left:right] = warped.clamp(0.0, 1.0)
    return out


def paste_face(
    canvas: torch.Tensor,
    face: torch.Tensor,
    matrix: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Blend ``face`` (``[C, S, S]``, aligned by ``matrix``: canvas -> face) into ``canvas``
    (``[C, H, W]``, modified in place and returned) with the feathered ``mask`` (``[1, S, S]``).

    Only the face's footprint on the canvas is warped.  Where the mask is 0 the canvas is untouched.
    """
    size = face.shape[-1]
    mask = feather_mask(size, dtype=face.dtype, device=face.device) if mask is None else mask
    back = invert_affine(matrix.to(torch.float64).cpu())  # face -> canvas
    _, height, width = canvas.shape
    x0, y0, x1, y1 = footprint(matrix.to(torch.float64).cpu(), (size, size))
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    right, bottom = min(width, math.ceil(x1) + 1), min(height, math.ceil(y1) + 1)
    if right <= left or bottom <= top:
        return canvas
    to_region = compose_affine(_translation(-left, -top), back)
    region = (bottom - top, right - left)
    both = torch.cat([face.to(canvas.dtype), mask.to(canvas.dtype)])
    # border padding: the mask is 0 along the crop's edge, so nothing outside it gets any weight
    warped = warp_image(both, to_region, region, padding_mode="border")
    weight = warped[-1:].clamp(0.0, 1.0)
    patch = canvas[:, top:bottom, left:right]
    patch.mul_(1.0 - weight).add_(warped[:-1].clamp(-1.0, 1.0) * weight)
    return canvas
