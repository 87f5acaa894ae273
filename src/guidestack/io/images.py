"""Reading user images and masks safely, and bringing them to the prior's square resolution.

Everything a user points guidestack at goes through :func:`read_image`, so one place decides what
is accepted and every refusal is an :class:`~guidestack.engine.errors.InputError` that names the
file and the cause.

What is read
    PNG, JPEG, WebP and TIFF (the first frame of animated / multi-page files, with a warning).
    8-bit and 16-bit data: PIL modes ``1``, ``L``, ``LA``, ``P``, ``PA``, ``RGB``, ``RGBA``,
    ``CMYK``, ``YCbCr``, ``I;16`` (any byte order), ``I`` (values 0..65535), ``F`` (floats, clipped
    to [0, 1]) and 16-bit RGB / RGBA PNG and TIFF, which PIL alone would cut to 8 bits.
    Grayscale is replicated to 3 channels, palettes are expanded, CMYK is converted to RGB, the
    alpha channel of an image is dropped (with a warning giving the share of transparent pixels),
    and the EXIF orientation is applied so the picture is the way up a viewer shows it.

Masks (``kind="mask"``)
    White = 1 = missing (or damaged), black = 0 = known; gray, RGB (luminance), RGBA
    (transparent pixels count as black, i.e. known), palette and 1-bit files are accepted and
    thresholded at 0.5.

Limits (refused with a message)
    - missing file, a folder, an empty (0 byte) file, a file that is not an image, a format other
      than the four above;
    - a truncated or corrupt file: the whole image is decoded up front, with PIL's
      ``LOAD_TRUNCATED_IMAGES`` held at ``False``, so a cut-off download fails here and not as a
      gray band in the result;
    - smaller than ``MIN_SIDE`` = 8 pixels on its shortest side;
    - larger than ``MAX_PIXELS`` = 50,000,000 pixels or ``MAX_SIDE`` = 16,384 pixels on a side.
      This is checked on the size the file's header declares, BEFORE anything is decoded, so a
      small file claiming to be huge (a decompression bomb) costs nothing; PIL's own
      ``DecompressionBombError`` / warning is turned into the same refusal.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import stat
import struct
import sys
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

from guidestack.engine.errors import InputError

MIN_SIDE = 8
#: largest file (or pipe stream) read as an image
MAX_INPUT_BYTES = 1 << 30
#: seconds a pipe may stay silent before it is refused
PIPE_TIMEOUT = 10
MAX_PIXELS = 50_000_000
MAX_SIDE = 16384
#: file name suffixes a folder of inputs is searched for
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
SUPPORTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP", "TIFF": "TIFF"}

Kind = Literal["image", "mask"]

_EXIF_ORIENTATION = 0x0112
# Raw modes PIL decodes to 8 bits by keeping the high byte.  Decoding the same data again with
# the opposite byte order keeps the LOW byte instead (same bits per pixel, so PNG filtering and
# TIFF strips are undone identically), and the two together give the full 16 bits.
# Compressed TIFF is decoded by libtiff into native byte order ("N").
_OTHER_ORDER = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
_SWAP_16 = {
    f"{base};16{order}": f"{base};16{other}"
    for base in ("RGB", "RGBA", "RGBX")
    for order, other in _OTHER_ORDER.items()
}
# 16-bit gray + alpha PNG: PIL has no low-byte unpacker, but "RGBA" has the same 32 bits per
# pixel and hands over the four raw bytes (L high, L low, A high, A low).
_RAW_BYTES_16 = {"LA;16B": "RGBA"}


@dataclass
class LoadedImage:
    """A decoded user file.

    ``tensor`` is ``[3, H, W]`` float32 in [-1, 1] for images, ``[1, H, W]`` in {0, 1} for masks
    (1 = missing).  ``size`` is ``(W, H)`` after the EXIF orientation was applied (the size of
    ``tensor``); ``mode`` is PIL's mode of the stored data, ``bit_depth`` bits per channel.
    """

    tensor: torch.Tensor
    path: Path | None
    size: tuple[int, int]
    mode: str
    bit_depth: int
    format: str
    kind: Kind = "image"
    orientation: int = 1
    warnings: list[str] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """What run.json records about this input."""
        return {
            "path": None if self.path is None else str(self.path),
            "kind": self.kind,
            "size": list(self.size),
            "mode": self.mode,
            "bit_depth": self.bit_depth,
            "format": self.format,
            "orientation": self.orientation,
            "warnings": list(self.warnings),
        }


def read_image(path: str | Path, *, kind: Kind = "image") -> LoadedImage:
    """Read an image (``[3, H, W]`` in [-1, 1]) or a mask (``[1, H, W]`` in {0, 1}, 1 = missing).

    Raises :class:`InputError` for every file that cannot be used (see the module docstring).
    """
    if kind not in ("image", "mask"):
        raise ValueError(f"kind must be 'image' or 'mask', not {kind!r}")
    path = Path(path)
    data = read_bytes(path, kind)
    notes: list[str] = []
    size = declared_size(data)
    if size is not None:  # refuse a huge image before PIL allocates anything for it
        _check_size(path, kind, size)
    try:
        with _strict_pil(notes), Image.open(io.BytesIO(data)) as im:
            fmt = _check_format(path, kind, im)
            _check_size(path, kind, im.size)
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                notes.append(f"{path.name} has {frames} frames; only the first is used")
            mode = im.mode
            values, alpha, bit_depth = _decode(path, kind, im, notes, data)
            orientation = _orientation(im, notes)
        if fmt == "JPEG":
            _check_jpeg_scan(path, kind, data, mode)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(
            f"{kind} {path} is too large to read safely ({e}); guidestack reads at most "
            f"{MAX_PIXELS:,} pixels and {MAX_SIDE} pixels per side: downscale it first"
        ) from e
    except UnidentifiedImageError as e:
        raise InputError(
            f"{kind} {path} is not an image guidestack can read "
            f"(supported: {', '.join(sorted(set(SUPPORTED_FORMATS.values())))})"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error, IndexError) as e:
        raise InputError(f"{kind} {path} is truncated or corrupt: {e}") from e

    values = _orient(values, orientation)
    alpha = None if alpha is None else _orient(alpha[..., None], orientation)[..., 0]
    if kind == "image":
        tensor = _image_tensor(path, values, alpha, notes)
    else:
        tensor = _mask_tensor(path, values, alpha, notes)
    height, width = tensor.shape[-2:]
    return LoadedImage(
        tensor=tensor,
        path=path,
        size=(int(width), int(height)),
        mode=mode,
        bit_depth=bit_depth,
        format=fmt,
        kind=kind,
        orientation=orientation,
        warnings=notes,
    )


def check_same_size(
    image_path: str | Path,
    image: LoadedImage | torch.Tensor,
    mask_path: str | Path,
    mask: LoadedImage | torch.Tensor,
) -> None:
    """Refuse a mask whose size differs from its image's: masks must match pixel for pixel.

    Resizing a mismatched mask silently would shift the holes, so the user has to decide.
    """
    iw, ih = _size_of(image)
    mw, mh = _size_of(mask)
    if (iw, ih) == (mw, mh):
        return
    message = f"mask {mask_path} is {mw}x{mh} but image {image_path} is {iw}x{ih}"
    if (mw, mh) == (ih, iw):
        message += (
            "; the sizes are transposed: one file probably has an EXIF orientation the tool"
            " that made the other ignored (guidestack applies it to both)"
        )
    else:
        message += f"; a mask must match its image pixel for pixel: resize it to {iw}x{ih}"
    raise InputError(message)


@dataclass(frozen=True)
class Placement:
    """Where the square the prior saw sits in the original picture, recorded in run.json.

    ``box`` is ``(left, top, right, bottom)`` in original pixels; with ``mode="pad"`` it reaches
    outside the picture (negative ``left``/``top``).  ``size`` is the square's side after resizing.
    """

    original_size: tuple[int, int]
    mode: str
    box: tuple[int, int, int, int]
    size: int

    @property
    def scale(self) -> float:
        """Prior pixels per original pixel."""
        return self.size / (self.box[2] - self.box[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "original_size": list(self.original_size),
            "mode": self.mode,
            "box": list(self.box),
            "size": self.size,
            "scale": self.scale,
        }


def to_square(
    tensor: torch.Tensor,
    size: int,
    *,
    mode: Literal["center-crop", "pad"] = "center-crop",
    kind: Kind = "image",
) -> tuple[torch.Tensor, Placement]:
    """Centre-crop (or pad) ``[C, H, W]`` / ``[N, C, H, W]`` to a square, then resize to ``size``.

    Images are resized bicubic with antialiasing and clamped to [-1, 1]; padding repeats the edge
    pixels so the prior sees no artificial border.  Masks are resized so that a prior pixel is
    missing if ANY original pixel it covers is missing (area average > 0; nearest when
    enlarging): a damaged pixel must never be treated as known.  Padding a mask marks the padding
    missing, because it is not part of the picture and guidance must not pin it.
    """
    if mode not in ("center-crop", "pad"):
        raise ValueError(f"mode must be 'center-crop' or 'pad', not {mode!r}")
    if kind not in ("image", "mask"):
        raise ValueError(f"kind must be 'image' or 'mask', not {kind!r}")
    if tensor.dim() not in (3, 4):
        raise ValueError(f"expected [C, H, W] or [N, C, H, W], got shape {tuple(tensor.shape)}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    batched = tensor.dim() == 4
    x = tensor if batched else tensor[None]
    height, width = int(x.shape[-2]), int(x.shape[-1])

    if mode == "center-crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        x = x[..., top : top + side, left : left + side]
    else:
        side = max(width, height)
        pad_w, pad_h = side - width, side - height
        left, top = -(pad_w // 2), -(pad_h // 2)
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        if any(pads):
            if kind == "image":
                x = F.pad(x, pads, mode="replicate")
            else:
                x = F.pad(x, pads, mode="constant", value=1.0)
    placement = Placement((width, height), mode, (left, top, left + side, top + side), size)

    if side != size:
        if kind == "image":
            x = F.interpolate(
                x, size=(size, size), mode="bicubic", align_corners=False, antialias=True
            ).clamp(-1.0, 1.0)
        elif size < side:
            x = (F.interpolate(x, size=(size, size), mode="area") > 0).to(x.dtype)
        else:
            x = F.interpolate(x, size=(size, size), mode="nearest")
    x = x.contiguous()
    return (x if batched else x[0]), placement


# ----------------------------------------------------------------------------- internals


def read_bytes(path: Path, what: str = "image") -> bytes:
    """The whole file, read exactly once (then decoded from memory).

    Regular files and pipes (a FIFO, or ``<(cat face.png)``) are read; a pipe that nobody writes
    to is refused after :data:`PIPE_TIMEOUT` seconds instead of waiting forever, and so is
    anything larger than :data:`MAX_INPUT_BYTES`.  Folders, devices and sockets are refused.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {path} is a folder, not an image file")
    if stat.S_ISFIFO(info.st_mode):
        data = _read_pipe(path, what)
    elif stat.S_ISREG(info.st_mode):
        if info.st_size > MAX_INPUT_BYTES:
            raise InputError(
                f"{what} {path} is {info.st_size:,} bytes; guidestack reads files of at most "
                f"{MAX_INPUT_BYTES:,} bytes"
            )
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from e
    else:
        raise InputError(
            f"{what} {path} is not a regular file (a device or socket): give an image file"
        )
    if not data:
        raise InputError(f"{what} {path} is empty (0 bytes)")
    return data


def _read_pipe(path: Path, what: str) -> bytes:
    """Everything written into the FIFO ``path`` until its writer closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from e
    chunks: list[bytes] = []
    total = 0
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while True:
            if not poller.poll(PIPE_TIMEOUT * 1000):
                state = "stalled after" if total else "received nothing in"
                raise InputError(
                    f"{what} {path} is a pipe that {state} {PIPE_TIMEOUT} s; write the image "
                    "into it (e.g. <(cat face.png)) or give the file itself"
                )
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                if total or _writer_gone(poller):
                    break
                continue
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_INPUT_BYTES:
                raise InputError(f"{what} {path} sends more than {MAX_INPUT_BYTES:,} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks)


def _writer_gone(poller: select.poll) -> bool:
    """After an empty read: true once a writer has come and gone (POLLHUP), false while none has
    connected yet (the read then only means "no writer so far")."""
    return any(event & select.POLLHUP for _, event in poller.poll(0))


def declared_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` as the header of an image in a supported format declares it, read
    without decoding any pixel (and without PIL's decompression-bomb refusal, so a refusal can
    say how large the image claims to be); ``None`` when the data is not such an image."""
    Image.init()
    prefix = data[:16]
    for fmt in SUPPORTED_FORMATS:
        if fmt not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[fmt]
        if accept is not None and not accept(prefix):
            continue
        try:
            with factory(io.BytesIO(data), "") as im:
                return tuple(int(v) for v in im.size)  # type: ignore[return-value]
        except (SyntaxError, ValueError, OSError, EOFError, IndexError, struct.error, TypeError):
            continue
    return None


def _check_jpeg_scan(path: Path, what: str, data: bytes, mode: str) -> None:
    """Refuse JPEG data that libjpeg decodes only by resynchronising (corrupt scan data, which
    PIL accepts without a word): decode again with libjpeg-turbo's warnings made errors."""
    import simplejpeg

    colorspace = {"L": "GRAY", "CMYK": "CMYK"}.get(mode, "RGB")
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
    except ValueError as strict_error:
        try:  # a failure without strictness is not about corrupt data (e.g. a colour space)
            simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=False)
        except ValueError:
            return
        raise InputError(
            f'{what} {path} is corrupt: libjpeg reports "{strict_error}"; the picture would '
            "have damaged blocks. Use an intact copy of the file"
        ) from None


@contextlib.contextmanager
def _strict_pil(notes: list[str]) -> Iterator[None]:
    """Truncated files must fail and bomb warnings must stop the read, whatever others set.

    PIL's other warnings (e.g. corrupt EXIF) are collected into ``notes`` so they reach the user
    with the file's other warnings instead of scrolling past on stderr.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    notes.extend(f"PIL: {w.message}" for w in caught)


def _check_format(path: Path, what: str, im: Image.Image) -> str:
    fmt = SUPPORTED_FORMATS.get(im.format or "")
    if fmt is None:
        supported = ", ".join(sorted(set(SUPPORTED_FORMATS.values())))
        raise InputError(
            f"{what} {path} is a {im.format} file; guidestack reads {supported}: convert it to PNG"
        )
    return fmt


def _check_size(path: Path, what: str, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        raise InputError(
            f"{what} {path} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); "
            f"guidestack reads at most {MAX_PIXELS:,} pixels and {MAX_SIDE} pixels per side: "
            f"downscale it first"
        )
    if min(width, height) < MIN_SIDE:
        raise InputError(
            f"{what} {path} is {width}x{height} pixels; its shortest side must be at least "
            f"{MIN_SIDE} pixels"
        )


def _rawmode(im: Image.Image) -> str | None:
    """The raw mode of the first decoder tile (what the file stores), if PIL exposes it."""
    tile = getattr(im, "tile", None)
    if not tile:
        return None
    args = tile[0].args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(data: bytes, rawmode: str) -> Image.Image:
    """Decode the first frame of ``data`` again, unpacking its pixels as ``rawmode``."""
    im = Image.open(io.BytesIO(data))
    try:
        tiles = []
        for tile in im.tile:
            args = tile.args
            args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
            tiles.append(tile._replace(args=args))
        im.tile = tiles
        im.load()
    except BaseException:
        im.close()
        raise
    return im


def _decode(
    path: Path, what: str, im: Image.Image, notes: list[str], data: bytes | None = None
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Fully decode ``im``: ``(values [H, W, 1 or 3], alpha [H, W] or None, bit depth)``.

    Values are float32 in [0, 1], as stored (orientation not applied yet).
    """
    rawmode = _rawmode(im)
    if rawmode in _RAW_BYTES_16:
        with _with_rawmode(data, _RAW_BYTES_16[rawmode]) as raw_im:
            raw = np.asarray(raw_im).astype(np.uint16)
        gray = ((raw[..., 0] << 8) | raw[..., 1]).astype(np.float32) / 65535.0
        alpha = ((raw[..., 2] << 8) | raw[..., 3]).astype(np.float32) / 65535.0
        return gray[..., None], alpha, 16
    im.load()
    if rawmode in _SWAP_16 and im.mode in ("RGB", "RGBA"):
        high = np.asarray(im).astype(np.uint16)
        with _with_rawmode(data, _SWAP_16[rawmode]) as low_im:
            low = np.asarray(low_im).astype(np.uint16)
        full = ((high << 8) | low).astype(np.float32) / 65535.0
        alpha = full[..., 3] if im.mode == "RGBA" else None
        return full[..., :3], alpha, 16
    if rawmode and ";16" in rawmode and im.mode in ("RGB", "RGBA", "CMYK", "LA"):
        notes.append(f"{path.name}: 16-bit {rawmode} data was read at 8-bit precision")

    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)[..., None], None, 1
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32)[..., None] / 65535.0, None, 16
    if mode == "I":
        data = np.asarray(im)
        low, high = int(data.min()), int(data.max())
        if low < 0 or high > 65535:
            raise InputError(
                f"{what} {path} is a 32-bit integer image with values {low}..{high}; guidestack "
                f"reads integer images as 16-bit (0..65535): convert it to 8 or 16 bits"
            )
        return data.astype(np.float32)[..., None] / 65535.0, None, 16
    if mode == "F":
        data = np.asarray(im, dtype=np.float32)
        if not np.isfinite(data).all():
            raise InputError(f"{what} {path} contains NaN or infinite values")
        outside = float(((data < 0) | (data > 1)).mean())
        if outside > 0:
            notes.append(
                f"{path.name}: {_percent(outside)} of the float values were outside [0, 1] "
                f"and were clipped"
            )
        return np.clip(data, 0.0, 1.0)[..., None], None, 32
    if mode == "L":
        return _u8(im)[..., None], None, 8
    if mode in ("LA", "La"):
        data = _u8(im if mode == "LA" else im.convert("LA"))
        return data[..., :1], data[..., 1], 8
    if mode == "RGB":
        return _u8(im), None, 8
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and _has_transparency(im)):
        data = _u8(im if mode == "RGBA" else im.convert("RGBA"))
        return data[..., :3], data[..., 3], 8
    try:
        converted = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputError(
            f"{what} {path} has PIL mode {mode}, which cannot be converted to RGB"
        ) from e
    return _u8(converted), None, 8


def _u8(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float32) / 255.0


def _has_transparency(im: Image.Image) -> bool:
    return "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")


def _orientation(im: Image.Image, notes: list[str]) -> int:
    """The EXIF (or XMP) orientation, 1..8; a broken EXIF block is a warning, not a refusal."""
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception as e:  # any EXIF parsing failure means "orientation unknown"
        notes.append(f"EXIF data could not be read ({e}); the image is used as stored")
        return 1
    if value not in range(1, 9):
        notes.append(f"EXIF orientation {value} is invalid; the image is used as stored")
        return 1
    return value


def _orient(data: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to ``[H, W, C]`` exactly as ``ImageOps.exif_transpose`` does."""
    if orientation == 2:
        data = data[:, ::-1]
    elif orientation == 3:
        data = data[::-1, ::-1]
    elif orientation == 4:
        data = data[::-1]
    elif orientation == 5:
        data = data.transpose(1, 0, 2)
    elif orientation == 6:
        data = np.rot90(data, k=-1)
    elif orientation == 7:
        data = data.transpose(1, 0, 2)[::-1, ::-1]
    elif orientation == 8:
        data = np.rot90(data, k=1)
    return np.ascontiguousarray(data)


def _image_tensor(
    path: Path, values: np.ndarray, alpha: np.ndarray | None, notes: list[str]
) -> torch.Tensor:
    if alpha is not None:
        transparent = float((alpha < 1.0).mean())
        if transparent > 0:
            notes.append(
                f"{path.name}: alpha channel dropped: {_percent(transparent)} of pixels were "
                f"transparent"
            )
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    tensor = torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))
    return tensor.mul(2.0).sub(1.0).clamp(-1.0, 1.0).contiguous()


def _mask_tensor(
    path: Path, values: np.ndarray, alpha: np.ndarray | None, notes: list[str]
) -> torch.Tensor:
    if values.shape[-1] == 3:
        gray = values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        gray = values[..., 0]
    if alpha is not None and float(alpha.min()) < 1.0:
        notes.append(f"mask {path.name}: transparent pixels were treated as black (known)")
        gray = gray * alpha
    mask = (gray >= 0.5).astype(np.float32)
    missing = float(mask.mean())
    if missing == 0.0:
        notes.append(f"mask {path.name} marks no pixel as missing (white = missing)")
    elif missing == 1.0:  # (real masks can mark two thirds missing, so no softer threshold)
        notes.append(
            f"mask {path.name} marks every pixel as missing (white = missing); "
            f"if your mask uses black for missing, invert it"
        )
    return torch.from_numpy(mask)[None].contiguous()


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def _size_of(x: LoadedImage | torch.Tensor) -> tuple[int, int]:
    if isinstance(x, LoadedImage):
        return x.size
    return int(x.shape[-1]), int(x.shape[-2])


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files stay as given; folders expand to their images (sorted).  Missing paths and folders
    without images are kept so they are reported as refused inputs, never silently dropped."""
    paths: list[Path] = []
    for text in inputs:
        path = Path(text).expanduser()
        found = (
            sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if path.is_dir()
            else []
        )
        # a folder without images stays an input, so it is refused by name like any bad file
        paths.extend(found or [path])
    return paths


def load_input(obj: Any, *, kind: Kind = "image", name: str = "input") -> LoadedImage:
    """Any image a user may hand over, as a :class:`LoadedImage`.

    - a path (``str`` or ``Path``): :func:`read_image`, with all its checks;
    - a PIL image: any mode, converted as :func:`read_image` converts files (alpha dropped,
      gray replicated, 16-bit kept);
    - a numpy array ``[H, W]``, ``[H, W, C]`` (C = 1, 3 or 4; alpha dropped): uint8 (0..255),
      uint16 (0..65535), bool, or floats in [0, 1];
    - a tensor already in the engine's convention: an image ``[3, H, W]`` (or ``[1, 3, H, W]``)
      in [-1, 1], a mask ``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]`` in [0, 1] (1 = missing).

    Masks are thresholded at 0.5 (white = missing).  ``name`` labels messages for objects that
    have no file name.
    """
    if isinstance(obj, str | Path):
        return read_image(obj, kind=kind)
    if isinstance(obj, Image.Image):
        return _from_pil(obj, kind, name)
    if isinstance(obj, np.ndarray):
        return _from_array(obj, kind, name)
    if isinstance(obj, torch.Tensor):
        return _from_tensor(obj, kind, name)
    raise InputError(
        f"{kind} {name}: cannot use a {type(obj).__name__}; give a file path, a PIL image, a "
        "numpy array or a tensor"
    )


def _loaded(tensor: torch.Tensor, kind: Kind, name: str, mode: str, bits: int, notes: list[str]):
    height, width = int(tensor.shape[-2]), int(tensor.shape[-1])
    if min(height, width) < MIN_SIDE:
        raise InputError(
            f"{kind} {name} is {width}x{height}; the smallest side must be >= {MIN_SIDE}"
        )
    if height * width > MAX_PIXELS or max(height, width) > MAX_SIDE:
        raise InputError(
            f"{kind} {name} is {width}x{height}; guidestack reads at most {MAX_PIXELS:,} pixels "
            f"and {MAX_SIDE} pixels per side: downscale it first"
        )
    if not torch.isfinite(tensor).all():
        raise InputError(f"{kind} {name} contains NaN or infinite values")
    return LoadedImage(tensor, None, (width, height), mode, bits, "array", kind, 1, notes)


def _from_pil(im: Image.Image, kind: Kind, name: str) -> LoadedImage:
    _check_size(Path(name), kind, im.size)
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
    elif mode == "F":
        array = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    elif "A" in mode or (mode == "P" and "transparency" in im.info):
        array = np.asarray(im.convert("RGBA"))
    elif mode in ("1", "L"):
        array = np.asarray(im.convert("L"))
    else:
        array = np.asarray(im.convert("RGB"))
    loaded = _from_array(array, kind, name)
    loaded.mode = mode
    return loaded


def _from_array(array: np.ndarray, kind: Kind, name: str) -> LoadedImage:
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"{kind} {name}: an array must be [H, W] or [H, W, C] with C in 1, 3, 4; got {a.shape}"
        )
    if a.dtype == np.uint8:
        values, bits = a.astype(np.float32) / 255.0, 8
    elif a.dtype == np.uint16:
        values, bits = a.astype(np.float32) / 65535.0, 16
    elif a.dtype == np.bool_:
        values, bits = a.astype(np.float32), 1
    elif np.issubdtype(a.dtype, np.floating):
        values, bits = a.astype(np.float32), 32
        if not np.isfinite(values).all():
            raise InputError(f"{kind} {name} contains NaN or infinite values")
        if values.min() < 0.0 or values.max() > 1.0:
            raise InputError(
                f"{kind} {name}: a float array must hold values in [0, 1] "
                f"(got {values.min():.3g}..{values.max():.3g})"
            )
    else:
        raise InputError(f"{kind} {name}: unsupported array dtype {a.dtype}")
    alpha = None
    if values.shape[-1] == 4:
        values, alpha = values[..., :3], values[..., 3]
    notes: list[str] = []
    label = Path(name)
    if kind == "image":
        tensor = _image_tensor(label, values, alpha, notes)
    else:
        tensor = _mask_tensor(label, values, alpha, notes)
    return _loaded(tensor, kind, name, f"array[{a.dtype}]", bits, notes)


def _from_tensor(x: torch.Tensor, kind: Kind, name: str) -> LoadedImage:
    t = x.detach().to(device="cpu", dtype=torch.float32)
    while t.dim() > 3 and t.shape[0] == 1:
        t = t[0]
    if kind == "mask":
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or t.shape[0] != 1:
            raise InputError(f"mask {name}: expected [H, W] or [1, H, W], got {tuple(x.shape)}")
        t = (t >= 0.5).to(torch.float32)
    else:
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise InputError(f"image {name}: expected [3, H, W] in [-1, 1], got {tuple(x.shape)}")
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        if bool(((t < -1.0 - 1e-6) | (t > 1.0 + 1e-6)).any()):
            raise InputError(
                f"image {name}: tensors are taken in [-1, 1] (the engine's convention); got "
                f"values in {float(t.min()):.3g}..{float(t.max()):.3g}"
            )
        t = t.clamp(-1.0, 1.0)
    return _loaded(t.contiguous(), kind, name, "tensor", 32, [])


__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "SUPPORTED_FORMATS",
    "LoadedImage",
    "Placement",
    "check_same_size",
    "declared_size",
    "expand_inputs",
    "load_input",
    "read_bytes",
    "read_image",
    "to_square",
]
