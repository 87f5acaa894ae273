"""Fitting the Gaussian prior: probabilistic PCA of a folder of aligned face images.

Tipping & Bishop's maximum-likelihood solution: with the sample covariance's eigenvalues
``e_1 >= e_2 >= ...`` (over all ``d`` dimensions, zeros included), ``s2`` is the mean of the
``d - k`` discarded ones and ``lam_i = e_i - s2``.  With far fewer images than pixels
(``n << d = 12288`` at 64x64 RGB) the eigenvectors come from a thin SVD of the centred ``n x d``
data matrix, ``O(n^2 d)``; the ``d x d`` covariance is never formed.

Images are read with Pillow: EXIF orientation applied, converted to RGB (gray is replicated,
alpha dropped, 16-bit gray scaled to 8 bits), centre-cropped to a square and resized with
Pillow's bicubic filter, which widens its support when shrinking and so antialiases.

With ``align=True`` each photo is instead searched for faces (MTCNN), and every face found (with
probability >= ``threshold`` and a box of at least ``min_face`` pixels) is cut out along the FFHQ
five-point template at the prior's size, the same way ``guidestack run --faces`` frames the faces
it restores (:mod:`guidestack.plugins.faces`).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from guidestack.engine.errors import InputError, OutputError, UsageError

from .gaussian import GaussianPrior

#: file name endings read as images (case-insensitive)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: components of the shipped prior: the maximum of held-out (leave-one-face-out) likelihood, where
#: heavy-noise denoising error is within 1% of its value at k = 32 (docs/prior.md)
SHIPPED_COMPONENTS = 20
SHIPPED_NAME = "gaussian-faces-64"
SHIPPED_SIZE = 64
#: a face used for fitting needs at least this MTCNN probability
ALIGN_THRESHOLD = 0.9
#: two aligned faces correlating at least this much (either one mirrored) are the same photo
NEAR_DUPLICATE = 0.95
#: long side photos are shrunk to for detection when fitting (faces there are large)
ALIGN_DETECT_SIDE = 640
#: smallest face (box side, px) taken for the shipped prior: the deepface portraits' faces are
#: >= 100 px, and a larger minimum lets big photos be searched at a lower resolution (faster)
SHIPPED_MIN_FACE = 80


# ------------------------------------------------------------------------------------ reading


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a folder of aligned face images")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(f"cannot list image folder {folder}: {exc.strerror or exc}") from exc
    return [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, keeping the full range of 16-bit grayscale (Pillow would clip it to 255)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _centre_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def decode_image(data: bytes, size: int) -> torch.Tensor:
    """One image file's bytes as a ``[3, size, size]`` float32 tensor in [-1, 1]."""
    with Image.open(io.BytesIO(data)) as opened:
        image = _to_rgb(ImageOps.exif_transpose(opened))
    image = _centre_square(image).resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def _distinct_decoded(
    files: Sequence[Path],
    decode: Callable[[bytes], Any],
    skipped: list[dict[str, str]],
    duplicates: list[dict[str, str]],
) -> Iterator[tuple[Path, Any]]:
    """``(path, decode(bytes))`` for each readable file; unreadable files go to ``skipped`` and
    byte-identical copies of an earlier file to ``duplicates`` (a copy must not count twice)."""
    seen: dict[str, str] = {}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            skipped.append({"file": str(path), "reason": exc.strerror or str(exc)})
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            duplicates.append({"file": str(path), "same_as": seen[digest]})
            continue
        try:
            value = decode(data)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            skipped.append({"file": str(path), "reason": f"not a readable image ({exc})"})
            continue
        seen[digest] = str(path)
        yield path, value


def read_images(files: list[Path], size: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Decode ``files`` to ``[N, 3, size, size]``; skips unreadable files and byte-identical copies.

    A duplicate would silently count twice in the fit, so copies are dropped (and reported).
    Raises :class:`InputError` if no file is usable.
    """
    if size < 2:
        raise UsageError(f"--size must be at least 2 pixels, got {size}")
    images: list[torch.Tensor] = []
    used: list[str] = []
    skipped: list[dict[str, str]] = []
    duplicates: list[dict[str, str]] = []
    for path, image in _distinct_decoded(
        files, lambda data: decode_image(data, size), skipped, duplicates
    ):
        images.append(image)
        used.append(str(path))
    report = {"files": used, "skipped": skipped, "duplicates": duplicates}
    if not images:
        where = sorted({str(Path(f).parent) for f in map(str, files)}) or ["(no files)"]
        detail = f"; {len(skipped)} file(s) could not be read" if skipped else ""
        raise InputError(
            f"no usable image in {', '.join(where)}{detail}: expected aligned face images "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    return torch.stack(images), report


def decode_photo(data: bytes, reduce: float = 1.0) -> tuple[torch.Tensor, float]:
    """A whole photo's bytes as ``[3, H, W]`` float32 in [-1, 1] (EXIF orientation applied) and
    the scale it was decoded at.

    ``reduce < 1`` lets a JPEG be decoded at 1/2, 1/4 or 1/8 of its size (the largest reduction
    that keeps at least ``reduce`` of it): several times faster for big photos.
    """
    with Image.open(io.BytesIO(data)) as opened:
        width = opened.size[0]
        if reduce < 1.0 and opened.format == "JPEG":
            w, h = opened.size
            opened.draft("RGB", (math.ceil(w * reduce), math.ceil(h * reduce)))
        scale = opened.size[0] / width
        image = _to_rgb(ImageOps.exif_transpose(opened))
    array = np.asarray(image, dtype=np.float32) * (1.0 / 127.5) - 1.0
    return torch.from_numpy(array).permute(2, 0, 1), scale


def default_min_face(size: int) -> float:
    """Smallest face box (pixels) used for a ``size`` prior: ``size / 2`` (at least 20).

    An MTCNN box is 0.53 of an aligned crop's side (mean over faces/hq), so such a face fills the
    crop at about its own resolution: no training face is blown up from a few pixels.
    """
    return max(20.0, size / 2)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))


def read_aligned_faces(
    files: list[Path],
    size: int,
    *,
    threshold: float = ALIGN_THRESHOLD,
    min_face: float | None = None,
    max_faces: int | None = None,
    detect_side: int = ALIGN_DETECT_SIDE,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Detect and align the faces in ``files``: ``[N, 3, size, size]`` in [-1, 1] and a report.

    Per photo, faces with probability >= ``threshold`` and a box of >= ``min_face`` pixels
    (default :func:`default_min_face`) are kept, the ``max_faces`` largest if given.  Photos
    without one are skipped; byte-identical files and near-identical faces (correlation >=
    :data:`NEAR_DUPLICATE` with an earlier face or its mirror image, e.g. a mirrored copy of a
    photo) are dropped; all three are listed in the report.  Detection runs in float64 and the
    landmarks are rounded to 1/1000 pixel, so the last bits of the detector's arithmetic (which
    vary with the number of CPU threads) do not change the crops: refits are byte-identical.
    """
    from guidestack.plugins.faces.align import align_face
    from guidestack.plugins.faces.detect import detect_faces, select_faces

    if size < 2:
        raise UsageError(f"--size must be at least 2 pixels, got {size}")
    min_face = default_min_face(size) if min_face is None else float(min_face)
    crops: list[torch.Tensor] = []
    faces: list[dict[str, Any]] = []
    used: list[str] = []
    skipped: list[dict[str, str]] = []
    duplicates: list[dict[str, str]] = []
    near: list[dict[str, Any]] = []
    # a face of min_face px must keep >= size / 2 px (see default_min_face)
    reduce = size / (2.0 * min_face)
    decoded = _distinct_decoded(
        files, lambda data: decode_photo(data, reduce=reduce), skipped, duplicates
    )
    for path, (photo, scale) in decoded:
        found = detect_faces(photo, min_face=min_face * scale, detect_side=detect_side, double=True)
        kept, notes = select_faces(found, threshold=threshold, min_face=min_face * scale)
        kept = sorted(kept, key=lambda d: -d.size)[:max_faces]
        if not kept:
            reason = f"no face with probability >= {threshold} and >= {min_face:g} px"
            skipped.append({"file": str(path), "reason": "; ".join([reason, *notes])})
            continue
        used.append(str(path))
        for index, face in enumerate(kept):
            landmarks = torch.round(face.landmarks * 1000.0) / 1000.0
            crop, _ = align_face(photo, landmarks, size)
            name = f"{path.parent.name}/{path.name}#{index}"
            twin = next(
                (
                    (other["face"], corr, mirrored)
                    for other, previous in zip(faces, crops, strict=True)
                    for mirrored, corr in (
                        (False, _correlation(crop, previous)),
                        (True, _correlation(crop.flip(-1), previous)),
                    )
                    if corr >= NEAR_DUPLICATE
                ),
                None,
            )
            if twin is not None:
                near.append(
                    {
                        "face": name,
                        "same_as": twin[0],
                        "correlation": round(twin[1], 4),
                        "mirrored": twin[2],
                    }
                )
                continue
            crops.append(crop)
            faces.append(
                {
                    "face": name,
                    "prob": round(face.prob, 4),
                    "size": round(face.size / scale, 1),
                    "decoded_at": scale,
                    "landmarks": landmarks.tolist(),
                }
            )
    report = {
        "files": used,
        "faces": faces,
        "skipped": skipped,
        "duplicates": duplicates,
        "near_duplicates": near,
        "alignment": {
            "template": "ffhq-5-point",
            "detector": "mtcnn",
            "threshold": threshold,
            "min_face": min_face,
            "max_faces": max_faces,
        },
    }
    if not crops:
        where = sorted({str(Path(f).parent) for f in map(str, files)}) or ["(no files)"]
        raise InputError(
            f"no usable face in {', '.join(where)}: {len(skipped)} file(s) skipped "
            f"(no face with probability >= {threshold} and >= {min_face:g} px, or unreadable)"
        )
    return torch.stack(crops), report


# ------------------------------------------------------------------------------------ fitting


def fit_gaussian_prior(
    images: torch.Tensor,
    components: int,
    flips: bool = True,
    *,
    name: str = "gaussian",
    source: str = "",
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> GaussianPrior:
    """Maximum-likelihood probabilistic PCA of ``images`` (``[N, C, S, S]`` in [-1, 1]).

    ``flips`` adds each image's mirror image (faces are near-symmetric; doubles the data).
    ``components`` must leave at least one discarded direction with variance, i.e.
    ``1 <= k <= n - 2`` for ``n`` samples (after flips) and ``k < d``: otherwise ``s2`` is 0 and the
    density is singular.  The fit runs in float64; the prior is returned in ``dtype``.
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"images must be [N, C, S, S] (square), got {tuple(images.shape)}")
    x = images.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise InputError("images contain NaN or infinite values")
    if float(x.abs().max()) > 1.0 + 1e-6:
        raise InputError("images must be scaled to [-1, 1] before fitting")
    if flips:
        x = torch.cat([x, x.flip(-1)])
    n, d = int(x.shape[0]), int(x[0].numel())
    most = min(n - 2, d - 1)
    if not 1 <= components <= most:
        plural = "s" if images.shape[0] != 1 else ""
        raise UsageError(
            f"--components {components} does not fit {images.shape[0]} image{plural} "
            f"({n} samples{' with flips' if flips else ''}): use 1 to {max(most, 1)}, since "
            "the noise variance s2 is estimated from the discarded directions"
            + ("" if most >= 1 else "; add images")
        )
    mean = x.mean(0)
    centred = (x - mean).reshape(n, d)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    eig = singular.square() / n
    total = float(centred.square().sum()) / n
    kept = float(eig[:components].sum())
    s2 = (total - kept) / (d - components)
    if not s2 > 1e-12 * max(total, 1e-300) / d:
        raise InputError(
            f"the images span fewer than {components + 1} directions (identical or nearly "
            "identical images?); use fewer components or more varied images"
        )
    basis = vh[:components].T.contiguous()
    # a deterministic sign per component so refits give the same file: the first entry whose
    # magnitude is within 1e-6 of the largest is made positive.  With flips, an antisymmetric
    # component has its largest magnitude twice (a pixel and its mirror) with opposite signs, and a
    # plain argmax would let the last bits of the SVD (thread count) pick the sign.
    magnitude = basis.abs()
    near_peak = magnitude >= magnitude.max(0, keepdim=True).values * (1.0 - 1e-6)
    peak = near_peak.to(torch.int32).argmax(0)  # argmax returns the first maximum
    basis = basis * torch.sign(basis[peak, torch.arange(components)])
    lam = (eig[:components] - s2).clamp_min(0.0)
    meta = {
        "source": source,
        "num_images": int(images.shape[0]),
        "num_samples": n,
        "flips": bool(flips),
        # 10 significant digits: the last bits of float64 sums vary with the BLAS thread count
        "explained_variance": _round(kept / total if total > 0 else 0.0),
        "total_variance": _round(total),
    }
    meta.update(metadata or {})
    return GaussianPrior(mean, basis, lam, s2, name=name, metadata=meta, dtype=dtype)


def _round(value: float) -> float:
    return float(f"{value:.10g}")


def fit_from_folder(
    folder: str | Path,
    size: int,
    components: int,
    flips: bool = True,
    *,
    align: bool = False,
    threshold: float = ALIGN_THRESHOLD,
    min_face: float | None = None,
    max_faces: int | None = None,
) -> tuple[GaussianPrior, dict[str, Any]]:
    """Fit a prior to every image file in ``folder``; returns the prior and a report dict.

    ``align=False``: the files are aligned faces already (centre-cropped and resized).
    ``align=True``: the faces in the photos are detected and aligned (:func:`read_aligned_faces`).
    """
    folder = Path(folder)
    if align:
        images, report = read_aligned_faces(
            image_files(folder), size, threshold=threshold, min_face=min_face, max_faces=max_faces
        )
        what = f"{images.shape[0]} faces aligned from {len(report['files'])} photos in {folder}"
        metadata = {"files": [f["face"] for f in report["faces"]], "alignment": report["alignment"]}
    else:
        images, report = read_images(image_files(folder), size)
        what = f"{images.shape[0]} images from {folder}"
        metadata = {"files": [Path(f).name for f in report["files"]]}
    prior = fit_gaussian_prior(
        images,
        components,
        flips,
        name=folder.resolve().name or "gaussian",
        source=what,
        metadata=metadata,
    )
    report.update(_summary(prior))
    return prior, report


def _summary(prior: GaussianPrior) -> dict[str, Any]:
    meta = prior.metadata
    return {
        "name": prior.name,
        "images": meta["num_images"],
        "samples": meta["num_samples"],
        "flips": meta["flips"],
        "size": prior.image_size,
        "channels": prior.channels,
        "components": prior.num_components,
        "s2": float(prior.s2),
        "explained_variance": meta["explained_variance"],
    }


# ------------------------------------------------------------------------------------ writing


def _check_output(output: Path, overwrite: bool) -> None:
    if output.is_dir():
        raise OutputError(f"{output} is a folder; give a file name such as {output / 'prior.pt'}")
    if output.exists() and not overwrite:
        raise OutputError(f"{output} exists; remove it or ask to overwrite it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_prior(prior: GaussianPrior, output: str | Path, *, overwrite: bool = False) -> dict:
    """Save atomically (temp file in the same folder, then ``os.replace``): a reader never sees
    half a file and an interrupted fit leaves any previous file intact."""
    output = Path(output)
    _check_output(output, overwrite)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from exc
    os.close(handle)
    try:
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        prior.save(temp)
        os.replace(temp, output)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    data = output.read_bytes()
    return {"output": str(output), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def fit_command(
    folder: str | Path,
    output: str | Path,
    size: int = 64,
    components: int = 16,
    flips: bool = True,
    *,
    overwrite: bool = False,
    align: bool = False,
) -> dict[str, Any]:
    """``guidestack prior fit FOLDER -o FILE [--align]``: fit, write atomically, return a
    JSON-able report."""
    _check_output(Path(output), overwrite)  # fail before the (slow) fit
    prior, report = fit_from_folder(folder, size, components, flips, align=align)
    report.update(write_prior(prior, output, overwrite=overwrite))
    return report


def shipped_prior_files(data_dir: str | Path) -> list[Path]:
    """The photos the shipped prior is fitted on, in this order: ``faces/hq/*.png``,
    ``faces/identity/img*.jpg`` and ``faces/identity/ref_*.png`` (the HQ references, not the
    degraded ``ref_lq_*``): every face image PROVENANCE.md allows the prior to be fitted on."""
    data_dir = Path(data_dir)
    identity = data_dir / "faces" / "identity"
    hq = sorted((data_dir / "faces" / "hq").glob("*.png"))
    photos = sorted(identity.glob("img*.jpg"))
    refs = sorted(p for p in identity.glob("ref_*.png") if not p.name.startswith("ref_lq_"))
    return hq + photos + refs


def refit_shipped_prior(
    data_dir: str | Path, output: str | Path | None = None, *, overwrite: bool = False
) -> tuple[GaussianPrior, dict[str, Any]]:
    """Rebuild ``gaussian-faces-64`` from the shared test data (see docs/prior.md, provenance).

    Every photo goes through the run-time alignment (MTCNN + FFHQ template), the already aligned
    faces/hq too, so all faces share one framing.  One face per photo, the largest (the
    portrait's subject; bystanders are small or out of focus), with probability >= 0.9 and a box
    of >= :data:`SHIPPED_MIN_FACE` px.  The seven ``identity/ref_*.png`` are byte-identical to
    ``hq/pgdiff_*.png`` and ``img11_reflection.jpg`` is ``img11.jpg`` mirrored: dropped as
    duplicates, so the fit sees 75 distinct faces (150 with flips).
    """
    files = shipped_prior_files(data_dir)
    images, report = read_aligned_faces(
        files, SHIPPED_SIZE, threshold=ALIGN_THRESHOLD, min_face=SHIPPED_MIN_FACE, max_faces=1
    )
    prior = fit_gaussian_prior(
        images,
        SHIPPED_COMPONENTS,
        flips=True,
        name=SHIPPED_NAME,
        source=(
            f"probabilistic PCA of {images.shape[0]} distinct faces (+ mirror images), aligned "
            "with guidestack's MTCNN + FFHQ-template alignment, from guidestack's shared test "
            "data: faces/hq (CelebA-HQ via DDNM, FFHQ via DPS, PGDiff reference faces) and "
            "faces/identity img* (deepface test photos) and ref_* (duplicates of the PGDiff "
            "ones); derived statistics only, see docs/prior.md"
        ),
        metadata={
            "files": [f["face"] for f in report["faces"]],
            "alignment": report["alignment"],
            "faces": report["faces"],
        },
    )
    report.update(_summary(prior))
    if output is not None:
        report.update(write_prior(prior, output, overwrite=overwrite))
    return prior, report
