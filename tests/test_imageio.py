"""Reading user images and masks (every mode, every refusal), squaring them, writing safely."""

from __future__ import annotations

import json
import math
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared
from PIL import Image, ImageFile, ImageOps

from guidestack.engine.errors import InputError, NonFiniteError, OutputError
from guidestack.io import images as imageio
from guidestack.io.images import Placement, check_same_size, read_image, to_square
from guidestack.io.outputs import (
    prepare_output_dir,
    save_image,
    save_mask,
    save_pil,
    write_json,
    write_text,
)

H, W = 16, 24  # non-square, so a transposed result cannot pass by accident


# ----------------------------------------------------------------------------- tiny encoders


def write_png(path: Path, array: np.ndarray, color_type: int, bit_depth: int) -> Path:
    """A minimal PNG encoder, for what PIL cannot write (16-bit RGB / RGBA / gray+alpha)."""
    height, width = array.shape[:2]
    data = array.astype(">u2" if bit_depth == 16 else "u1")
    raw = b"".join(b"\x00" + data[y].tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(_png_bytes(ihdr, zlib.compress(raw)))
    return path


def _png_bytes(ihdr: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A valid-looking 1-bit PNG that CLAIMS width x height with almost no data (a bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(_png_bytes(ihdr, zlib.compress(b"\x00" * 64)))
    return path


def write_tiff16(path: Path, array: np.ndarray, *, big_endian: bool, deflate: bool) -> Path:
    """A minimal single-strip 16-bit RGB(A) TIFF (PIL cannot write one)."""
    height, width, channels = array.shape
    e = ">" if big_endian else "<"
    pixels = array.astype(e + "u2").tobytes()
    if deflate:
        pixels = zlib.compress(pixels)
    bps = struct.pack(e + "H" * channels, *([16] * channels))
    data_at = 8 + len(bps)
    entries = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, channels, 8),
        (259, 3, 1, 8 if deflate else 1),
        (262, 3, 1, 2),
        (273, 4, 1, data_at),
        (277, 3, 1, channels),
        (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
        (284, 3, 1, 1),
    ]
    if channels == 4:
        entries.append((338, 3, 1, 2))  # unassociated alpha
    ifd = struct.pack(e + "H", len(entries))
    for tag, kind, count, value in sorted(entries):
        if kind == 3 and count == 1:
            ifd += struct.pack(e + "HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack(e + "HHII", tag, kind, count, value)
    ifd += struct.pack(e + "I", 0)
    head = (b"MM\x00\x2a" if big_endian else b"II\x2a\x00") + struct.pack(
        e + "I", data_at + len(pixels)
    )
    path.write_bytes(head + bps + pixels + ifd)
    return path


# ----------------------------------------------------------------------------- test pictures


def smooth_rgb() -> np.ndarray:
    """An asymmetric, smooth 8-bit RGB picture (survives JPEG well)."""
    y, x = np.mgrid[0:H, 0:W]
    r = 255 * x / (W - 1)
    g = 255 * y / (H - 1)
    b = 128 + 100 * np.sin(x / 4.0) * np.cos(y / 5.0)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def noisy(shape: tuple[int, ...], high: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high + 1, shape)


def expected8(array: np.ndarray) -> np.ndarray:
    """8-bit HWC (or HW gray) -> the [3, H, W] tensor read_image should return."""
    a = array.astype(np.float64) / 255.0
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return (a * 2 - 1).transpose(2, 0, 1)


def expected16(array: np.ndarray) -> np.ndarray:
    a = array.astype(np.float64) / 65535.0
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return (a[..., :3] * 2 - 1).transpose(2, 0, 1)


def mode_of(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def pil_oracle(path: Path) -> np.ndarray:
    """PIL's own 8-bit RGB decode, the reference for lossy formats and conversions."""
    with Image.open(path) as im:
        return expected8(np.asarray(im.convert("RGB")))


# Each case writes one real file and returns (path, expected [3,H,W], bit depth, warning or None).
def case_png_rgb8(d):
    a = noisy((H, W, 3), 255).astype(np.uint8)
    Image.fromarray(a).save(d / "a.png")
    return d / "a.png", expected8(a), 8, None


def case_jpeg(d):
    a = smooth_rgb()
    Image.fromarray(a).save(d / "a.jpg", quality=95)
    assert np.abs(pil_oracle(d / "a.jpg") - expected8(a)).max() < 0.15  # a JPEG, yet close
    return d / "a.jpg", pil_oracle(d / "a.jpg"), 8, None


def case_webp_lossless(d):
    a = noisy((H, W, 3), 255).astype(np.uint8)
    Image.fromarray(a).save(d / "a.webp", lossless=True)
    return d / "a.webp", expected8(a), 8, None


def case_webp_lossy(d):
    Image.fromarray(smooth_rgb()).save(d / "a.webp", quality=90)
    return d / "a.webp", pil_oracle(d / "a.webp"), 8, None


def case_tiff(d):
    a = noisy((H, W, 3), 255).astype(np.uint8)
    Image.fromarray(a).save(d / "a.tif", compression="tiff_deflate")
    return d / "a.tif", expected8(a), 8, None


def case_gray8_L(d):
    a = noisy((H, W), 255).astype(np.uint8)
    Image.fromarray(a, mode="L").save(d / "a.png")
    return d / "a.png", expected8(a), 8, None


def case_LA_opaque(d):
    a = noisy((H, W), 255).astype(np.uint8)
    Image.fromarray(np.stack([a, np.full_like(a, 255)], -1), mode="LA").save(d / "a.png")
    return d / "a.png", expected8(a), 8, None


def case_LA_transparent(d):
    a = noisy((H, W), 255).astype(np.uint8)
    alpha = np.full_like(a, 255)
    alpha[:4, :12] = 0  # 48 of 384 pixels = 12.5%
    Image.fromarray(np.stack([a, alpha], -1), mode="LA").save(d / "a.png")
    return d / "a.png", expected8(a), 8, "alpha channel dropped: 12.5% of pixels were transparent"


def case_palette(d):
    im = Image.fromarray(smooth_rgb()).quantize(colors=16)
    im.save(d / "a.png")
    assert mode_of(d / "a.png") == "P"
    return d / "a.png", expected8(np.asarray(im.convert("RGB"))), 8, None


def case_palette_transparent(d):
    im = Image.fromarray(smooth_rgb()).quantize(colors=16)
    index = im.getpixel((0, 0))
    im.save(d / "a.png", transparency=index)
    expected = expected8(np.asarray(im.convert("RGB")))
    return d / "a.png", expected, 8, "alpha channel dropped"


def case_rgba_opaque(d):
    a = noisy((H, W, 3), 255).astype(np.uint8)
    rgba = np.concatenate([a, np.full((H, W, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(d / "a.png")
    return d / "a.png", expected8(a), 8, None


def case_rgba_transparent(d):
    a = noisy((H, W, 3), 255).astype(np.uint8)
    alpha = np.full((H, W, 1), 255, np.uint8)
    alpha[:4] = 0  # a quarter of the rows
    alpha[8, 0] = 128  # one half-transparent pixel counts too
    Image.fromarray(np.concatenate([a, alpha], -1), mode="RGBA").save(d / "a.png")
    # (96 + 1) / 384 = 25.26%
    return d / "a.png", expected8(a), 8, "alpha channel dropped: 25.3% of pixels were transparent"


def case_cmyk_jpeg(d):
    Image.fromarray(smooth_rgb()).convert("CMYK").save(d / "a.jpg", quality=95)
    assert mode_of(d / "a.jpg") == "CMYK"
    assert np.abs(pil_oracle(d / "a.jpg") - expected8(smooth_rgb())).max() < 0.15
    return d / "a.jpg", pil_oracle(d / "a.jpg"), 8, None


def case_bilevel(d):
    a = noisy((H, W), 1).astype(bool)
    Image.fromarray(a).save(d / "a.png")
    assert mode_of(d / "a.png") == "1"
    return d / "a.png", expected8(a.astype(np.uint8) * 255), 1, None


def case_gray16_png(d):
    a = noisy((H, W), 65535).astype(np.uint16)
    a[0, 0], a[0, 1], a[0, 2] = 0, 32768, 65535
    Image.fromarray(a).save(d / "a.png")
    assert mode_of(d / "a.png").startswith("I")
    return d / "a.png", expected16(a), 16, None


def case_gray16_tiff_big_endian(d):
    a = noisy((H, W), 65535, seed=3).astype(np.uint16)
    # (not .convert("I;16B"): PIL clips that conversion to 255)
    Image.frombytes("I;16B", (W, H), a.astype(">u2").tobytes()).save(d / "a.tif")
    assert mode_of(d / "a.tif") == "I;16B"
    return d / "a.tif", expected16(a), 16, None


def case_int32_tiff(d):
    a = noisy((H, W), 65535, seed=4).astype(np.int32)
    Image.fromarray(a).save(d / "a.tif")
    assert mode_of(d / "a.tif") == "I"
    return d / "a.tif", expected16(a), 16, None


def case_float_tiff(d):
    a = np.random.default_rng(5).random((H, W)).astype(np.float32)
    Image.fromarray(a).save(d / "a.tif")
    return d / "a.tif", np.repeat((a * 2 - 1)[None], 3, 0), 32, None


def case_float_tiff_clipped(d):
    a = np.random.default_rng(5).random((H, W)).astype(np.float32)
    a[0, :6] = 1.7  # 6 / 384 = 1.56%
    Image.fromarray(a).save(d / "a.tif")
    want = np.repeat((np.clip(a, 0, 1) * 2 - 1)[None], 3, 0)
    return d / "a.tif", want, 32, "1.56% of the float values were outside [0, 1]"


def case_rgb16_png(d):
    a = noisy((H, W, 3), 65535, seed=6).astype(np.uint16)
    a[0, 0] = (0, 32768, 65535)
    a[0, 1] = (257, 256, 255)  # differ only in the low byte / only in the high byte
    write_png(d / "a.png", a, color_type=2, bit_depth=16)
    assert mode_of(d / "a.png") == "RGB"  # PIL alone would cut it to 8 bits
    return d / "a.png", expected16(a), 16, None


def case_rgba16_png(d):
    a = noisy((H, W, 4), 65535, seed=7).astype(np.uint16)
    a[..., 3] = 65535
    write_png(d / "a.png", a, color_type=6, bit_depth=16)
    return d / "a.png", expected16(a), 16, None


def case_gray_alpha16_png(d):
    a = noisy((H, W, 2), 65535, seed=8).astype(np.uint16)
    a[..., 1] = 65535
    a[0, 0, 1] = 0
    write_png(d / "a.png", a, color_type=4, bit_depth=16)
    return d / "a.png", expected16(a[..., 0]), 16, "alpha channel dropped: 0.26% of pixels"


def case_rgb16_tiff_le(d):
    a = noisy((H, W, 3), 65535, seed=9).astype(np.uint16)
    write_tiff16(d / "a.tif", a, big_endian=False, deflate=False)
    return d / "a.tif", expected16(a), 16, None


def case_rgb16_tiff_be(d):
    a = noisy((H, W, 3), 65535, seed=10).astype(np.uint16)
    write_tiff16(d / "a.tif", a, big_endian=True, deflate=False)
    return d / "a.tif", expected16(a), 16, None


def case_rgb16_tiff_deflate(d):
    a = noisy((H, W, 3), 65535, seed=11).astype(np.uint16)
    write_tiff16(d / "a.tif", a, big_endian=False, deflate=True)
    return d / "a.tif", expected16(a), 16, None


def case_rgba16_tiff(d):
    a = noisy((H, W, 4), 65535, seed=12).astype(np.uint16)
    a[..., 3] = 65535
    write_tiff16(d / "a.tif", a, big_endian=True, deflate=False)
    return d / "a.tif", expected16(a), 16, None


def case_multipage_tiff(d):
    a = noisy((H, W, 3), 255, seed=13).astype(np.uint8)
    b = Image.fromarray(255 - a)
    Image.fromarray(a).save(d / "a.tif", save_all=True, append_images=[b])
    return d / "a.tif", expected8(a), 8, "has 2 frames; only the first is used"


READ_CASES = {
    f.__name__[5:]: f
    for f in list(globals().values())
    if getattr(f, "__name__", "").startswith("case_")
}


@pytest.mark.parametrize("name", sorted(READ_CASES))
def test_read_image_decodes_each_kind_of_file(tmp_path, name):
    path, expected, bit_depth, warning = READ_CASES[name](tmp_path)
    loaded = read_image(path)
    assert loaded.tensor.dtype == torch.float32
    assert tuple(loaded.tensor.shape) == (3, H, W)
    assert loaded.size == (W, H)
    assert loaded.bit_depth == bit_depth
    assert loaded.path == path
    np.testing.assert_allclose(loaded.tensor.numpy(), expected, atol=1e-6, rtol=0)
    if warning is None:
        assert loaded.warnings == []
    else:
        assert any(warning in w for w in loaded.warnings), loaded.warnings


def test_16_bit_extremes_map_to_the_ends_of_the_range(tmp_path):
    a = np.zeros((8, 8, 3), np.uint16)
    a[0, 0], a[0, 1], a[0, 2] = 65535, 0, 32768
    t = read_image(write_png(tmp_path / "a.png", a, 2, 16)).tensor
    assert t[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert t[:, 0, 1].tolist() == [-1.0, -1.0, -1.0]
    assert abs(float(t[0, 0, 2]) - 1 / 65535) < 1e-7  # 32768 is just above the middle
    # An 8-bit read of the same file would give 128/255*2-1 = 0.0039, 250 times further off.


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    # Stored 64 wide x 32 tall, a red block at the stored top-left.  Orientation 6 means "rotate
    # 90 degrees clockwise to display": 32 wide x 64 tall, the block at the top-RIGHT.
    a = np.zeros((32, 64, 3), np.uint8)
    a[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "a.jpg", exif=exif, quality=95, subsampling=0)
    loaded = read_image(tmp_path / "a.jpg")
    assert loaded.orientation == 6
    assert loaded.size == (32, 64)
    t = loaded.tensor
    assert tuple(t.shape) == (3, 64, 32)
    assert t[0, 2:14, 18:30].min() > 0.8 and t[1, 2:14, 18:30].max() < -0.8  # red, top right
    assert t[0, 2:14, 2:14].max() < -0.8  # black at the top left
    assert t[0, 18:].max() < -0.8  # nothing red below


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(tmp_path, orientation):
    a = noisy((H, W, 3), 255, seed=orientation).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "a.png", exif=exif)
    with Image.open(tmp_path / "a.png") as im:
        oracle = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    if orientation != 1:
        assert oracle.shape != a.shape or not np.array_equal(oracle, a)
    loaded = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(loaded.tensor.numpy(), expected8(oracle), atol=1e-6)


def test_corrupt_exif_is_a_warning_not_a_refusal(tmp_path):
    # An EXIF block that announces 5 entries but ends after the first one.
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00"
    Image.new("RGB", (W, H)).save(tmp_path / "a.jpg", exif=exif)
    loaded = read_image(tmp_path / "a.jpg")
    assert loaded.size == (W, H) and loaded.orientation == 1
    assert any(w.startswith("PIL: Corrupt EXIF data") for w in loaded.warnings), loaded.warnings


# ----------------------------------------------------------------------------- refusals


def refuse_missing(d):
    return d / "nope.png", "does not exist"


def refuse_directory(d):
    (d / "folder.png").mkdir()
    return d / "folder.png", "is a folder"


def refuse_empty(d):
    (d / "a.png").write_bytes(b"")
    return d / "a.png", "empty (0 bytes)"


def refuse_truncated_png(d):
    Image.fromarray(noisy((64, 64, 3), 255).astype(np.uint8)).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "a.png").write_bytes(data[: len(data) // 2])
    return d / "a.png", "truncated or corrupt"


def refuse_truncated_jpeg(d):
    Image.fromarray(noisy((64, 64, 3), 255).astype(np.uint8)).save(d / "full.jpg")
    data = (d / "full.jpg").read_bytes()
    (d / "a.jpg").write_bytes(data[: int(len(data) * 0.8)])
    return d / "a.jpg", "truncated or corrupt"


def refuse_text_named_png(d):
    (d / "a.png").write_text("hello, I am not a picture\n")
    return d / "a.png", "is not an image"


def refuse_bmp(d):
    Image.fromarray(smooth_rgb()).save(d / "a.bmp")
    return d / "a.bmp", "is a BMP file"


def refuse_one_pixel(d):
    Image.new("RGB", (1, 1)).save(d / "a.png")
    return d / "a.png", "is 1x1 pixels; its shortest side must be at least 8"


def refuse_thin(d):
    Image.new("RGB", (100, 7)).save(d / "a.png")
    return d / "a.png", "is 100x7 pixels"


def refuse_bomb_20000(d):  # 400 Mpx: refused from the header, before PIL's own bomb check
    return write_png_header(d / "a.png", 20000, 20000), "is 20000x20000 pixels (400.0 megapixels)"


def refuse_60_megapixels(d):  # below PIL's limit, above ours
    return write_png_header(d / "a.png", 7746, 7746), "is 7746x7746 pixels (60.0 megapixels)"


def refuse_long_side(d):
    return write_png_header(d / "a.png", 20000, 8), "16384 pixels per side"


def refuse_int32_out_of_range(d):
    a = np.full((H, W), -5, np.int32)
    Image.fromarray(a).save(d / "a.tif")
    return d / "a.tif", "32-bit integer image with values -5..-5"


def refuse_float_nan(d):
    a = np.zeros((H, W), np.float32)
    a[3, 3] = np.nan
    Image.fromarray(a).save(d / "a.tif")
    return d / "a.tif", "NaN or infinite"


REFUSALS = {
    f.__name__[7:]: f
    for f in list(globals().values())
    if getattr(f, "__name__", "").startswith("refuse_")
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
@pytest.mark.parametrize("kind", ["image", "mask"])
def test_read_image_refuses_with_file_and_cause(tmp_path, name, kind):
    path, cause = REFUSALS[name](tmp_path)
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        read_image(path, kind=kind)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert str(path) in message
    assert cause in message
    assert message.startswith(kind)
    assert info.value.exit_code == 2
    assert elapsed < 1.0, f"refusal took {elapsed:.2f} s"


def test_huge_header_is_refused_before_decoding(tmp_path, monkeypatch):
    # Our own size check (60 Mpx is under PIL's bomb limit) must run before any pixel decoding.
    path = write_png_header(tmp_path / "a.png", 7746, 7746)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InputError, match="megapixels"):
        read_image(path)
    assert path.stat().st_size < 200


def test_limits_are_the_documented_ones():
    assert (imageio.MIN_SIDE, imageio.MAX_PIXELS, imageio.MAX_SIDE) == (8, 50_000_000, 16384)
    for text in ("MIN_SIDE`` = 8", "50,000,000", "16,384", "BEFORE anything is decoded"):
        assert text in imageio.__doc__


def test_truncation_is_detected_even_if_someone_enabled_truncated_loading(tmp_path, monkeypatch):
    path, _ = refuse_truncated_png(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InputError, match="truncated"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


# ----------------------------------------------------------------------------- masks


def mask_pattern() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[2:9, 5:17] = True
    m[12, :] = True
    return m


def mask_L(d):
    m = mask_pattern()
    a = np.where(m, 128, 127).astype(np.uint8)  # threshold 0.5 falls between 127 and 128
    Image.fromarray(a, mode="L").save(d / "m.png")
    return d / "m.png", m


def mask_rgb(d):
    m = mask_pattern()
    a = np.zeros((H, W, 3), np.uint8)
    a[m] = (255, 255, 255)
    a[~m] = (255, 0, 0)  # red: luminance 0.299 < 0.5, so known
    Image.fromarray(a).save(d / "m.png")
    return d / "m.png", m


def mask_rgba_strokes(d):
    m = mask_pattern()
    a = np.zeros((H, W, 4), np.uint8)
    a[..., :3] = 255  # white everywhere ...
    a[m, 3] = 255  # ... but only the strokes are opaque
    Image.fromarray(a, mode="RGBA").save(d / "m.png")
    return d / "m.png", m


def mask_palette(d):
    m = mask_pattern()
    im = Image.fromarray(np.where(m, 255, 0).astype(np.uint8), mode="L").convert("P")
    im.save(d / "m.png")
    assert mode_of(d / "m.png") == "P"
    return d / "m.png", m


def mask_bilevel(d):
    m = mask_pattern()
    Image.fromarray(m).save(d / "m.png")
    return d / "m.png", m


def mask_gray16(d):
    m = mask_pattern()
    Image.fromarray(np.where(m, 40000, 20000).astype(np.uint16)).save(d / "m.png")
    return d / "m.png", m


def mask_jpeg(d):
    m = np.zeros((H, W), bool)
    m[:8, :8] = True  # JPEG blocks: survives compression
    Image.fromarray(np.where(m, 255, 0).astype(np.uint8), mode="L").save(d / "m.jpg")
    return d / "m.jpg", m


MASKS = {
    f.__name__[5:]: f
    for f in list(globals().values())
    if getattr(f, "__name__", "").startswith("mask_") and f is not mask_pattern
}


@pytest.mark.parametrize("name", sorted(MASKS))
def test_read_mask_of_each_mode(tmp_path, name):
    path, expected = MASKS[name](tmp_path)
    loaded = read_image(path, kind="mask")
    assert loaded.kind == "mask"
    assert tuple(loaded.tensor.shape) == (1, H, W)
    assert set(loaded.tensor.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(loaded.tensor[0].numpy().astype(bool), expected)


def test_mask_warnings_for_empty_and_full_masks(tmp_path):
    Image.new("L", (W, H), 0).save(tmp_path / "empty.png")
    Image.new("L", (W, H), 255).save(tmp_path / "full.png")
    empty = read_image(tmp_path / "empty.png", kind="mask")
    full = read_image(tmp_path / "full.png", kind="mask")
    assert any("marks no pixel as missing" in w for w in empty.warnings)
    assert any("every pixel as missing" in w and "invert" in w for w in full.warnings)
    assert read_image(MASKS["L"](tmp_path)[0], kind="mask").warnings == []


def test_check_same_size(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "img.png")
    Image.new("L", (30, 20)).save(tmp_path / "mask.png")
    image = read_image(tmp_path / "img.png")
    mask = read_image(tmp_path / "mask.png", kind="mask")
    with pytest.raises(InputError) as info:
        check_same_size(tmp_path / "img.png", image, tmp_path / "mask.png", mask)
    assert f"mask {tmp_path / 'mask.png'} is 30x20 but image {tmp_path / 'img.png'} is 16x16" in (
        str(info.value)
    )
    check_same_size("i", image, "m", torch.zeros(1, 16, 16))  # equal sizes pass
    with pytest.raises(InputError, match="EXIF orientation"):
        check_same_size("i", torch.zeros(3, 20, 10), "m", torch.zeros(1, 10, 20))


def test_real_masked_face_and_its_mask():
    image_path = next(iter(sorted(shared("faces", "masked").iterdir())))
    mask_path = shared("faces", "masks", image_path.name)
    image = read_image(image_path)
    mask = read_image(mask_path, kind="mask")
    check_same_size(image_path, image, mask_path, mask)
    assert image.tensor.shape == (3, 512, 512) and mask.tensor.shape == (1, 512, 512)
    assert 0.005 < float(mask.tensor.mean()) < 0.5


# ----------------------------------------------------------------------------- to_square


def test_center_crop_keeps_the_middle_without_resampling():
    x = torch.rand(3, 8, 12) * 2 - 1
    out, placement = to_square(x, 8)
    torch.testing.assert_close(out, x[:, :, 2:10])
    assert placement == Placement((12, 8), "center-crop", (2, 0, 10, 8), 8)
    assert placement.scale == 1.0


def test_pad_replicates_edges_and_marks_mask_padding_missing():
    x = torch.rand(3, 8, 12) * 2 - 1
    out, placement = to_square(x, 12, mode="pad")
    assert placement.box == (0, -2, 12, 10)
    torch.testing.assert_close(out[:, 2:10], x)
    torch.testing.assert_close(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 11], x[:, -1])
    m, _ = to_square(torch.zeros(1, 8, 12), 12, mode="pad", kind="mask")
    assert m[:, :2].eq(1).all() and m[:, 10:].eq(1).all() and m[:, 2:10].eq(0).all()


def test_image_downscale_is_antialiased_and_clamped():
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2.0 - 1.0
    x = checker.expand(3, 64, 64).clone()
    out, placement = to_square(x, 16)
    assert placement.scale == 0.25
    assert out.shape == (3, 16, 16)
    assert out.abs().max() < 0.05  # averaged to gray; without antialiasing it aliases
    noise = torch.rand(3, 64, 64) * 2 - 1  # std 0.58
    smooth, _ = to_square(noise, 16)
    aliased = torch.nn.functional.interpolate(noise[None], size=16, mode="bicubic")
    assert smooth.std() < 0.15 < 0.35 < aliased.std()  # measured 0.12 vs 0.43
    up, _ = to_square(x[:, :8, :8], 24)
    assert up.min() >= -1 and up.max() <= 1


def test_mask_downscale_never_loses_a_missing_pixel():
    m = torch.zeros(1, 64, 64)
    m[0, 37, 5] = 1
    out, _ = to_square(m, 16, kind="mask")
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert out.sum() == 1 and out[0, 37 // 4, 5 // 4] == 1
    odd, _ = to_square(m, 20, kind="mask")  # non-integer factor
    assert set(odd.unique().tolist()) == {0.0, 1.0} and odd.sum() >= 1
    up, _ = to_square(m[:, 32:48, 0:16], 32, kind="mask")
    assert set(up.unique().tolist()) == {0.0, 1.0} and up.sum() == 4


def test_to_square_batched_matches_single():
    x = torch.rand(2, 3, 20, 30) * 2 - 1
    out, placement = to_square(x, 10)
    assert out.shape == (2, 3, 10, 10) and placement.box == (5, 0, 25, 20)
    torch.testing.assert_close(out[1], to_square(x[1], 10)[0])


# ----------------------------------------------------------------------------- outputs


def test_save_image_round_trips_8_bit(tmp_path):
    x = torch.rand(3, H, W) * 2.4 - 1.2  # out of range values are clamped
    save_image(x, tmp_path / "out.png")
    back = read_image(tmp_path / "out.png").tensor
    want = ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    torch.testing.assert_close(back, want, atol=1e-6, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    mode = os.stat(tmp_path / "out.png").st_mode & 0o777
    assert mode & 0o044 == 0o044 or os.name == "nt"  # readable by others, as umask decides


def test_save_mask_is_white_where_missing(tmp_path):
    m = torch.from_numpy(mask_pattern()).float()[None]
    save_mask(m, tmp_path / "m.png")
    assert set(np.unique(pixels_of(tmp_path / "m.png")).tolist()) == {0, 255}
    torch.testing.assert_close(read_image(tmp_path / "m.png", kind="mask").tensor, m)


def test_save_image_refuses_non_finite(tmp_path):
    x = torch.zeros(3, 8, 8)
    x[0, 1, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        save_image(x, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError("encoder exploded"), OSError(28, "No space left")])
def test_failed_write_leaves_neither_target_nor_temp_file(tmp_path, monkeypatch, error):
    old = tmp_path / "old.png"
    save_image(torch.zeros(3, 8, 8), old)
    before = old.read_bytes()

    def broken_encoder(im, fp, filename):
        fp.write(b"\x89PNG partial data")
        raise error

    monkeypatch.setitem(Image.SAVE, "PNG", broken_encoder)
    expected = OutputError if isinstance(error, OSError) else RuntimeError
    with pytest.raises(expected) as info:
        save_image(torch.zeros(3, 8, 8), tmp_path / "new.png")
    with pytest.raises(expected):
        save_image(torch.ones(3, 8, 8), old)
    if expected is OutputError:
        assert "new.png" in str(info.value) and "No space left" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]
    assert old.read_bytes() == before  # the previous result is intact


def test_write_into_missing_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot write"):
        write_text("x", tmp_path / "missing" / "a.txt")


def test_write_json_and_text(tmp_path):
    placement = Placement((12, 8), "center-crop", (2, 0, 10, 8), 8)
    obj = {
        "path": tmp_path / "a.png",
        "loss": float("nan"),
        "big": float("-inf"),
        "t": torch.tensor([1.5, 2.0]),
        "n": np.float32(0.25),
        "placement": placement,
        "tags": {"b", "a"},
        "size": (3, 4),
    }
    write_json(obj, tmp_path / "run.json")
    back = json.loads((tmp_path / "run.json").read_text())
    assert back["path"] == str(tmp_path / "a.png")
    assert back["loss"] == "nan" and back["big"] == "-inf"
    assert back["t"] == [1.5, 2.0] and back["n"] == 0.25
    assert back["placement"]["box"] == [2, 0, 10, 8] and back["placement"]["scale"] == 1.0
    assert back["tags"] == ["a", "b"] and back["size"] == [3, 4]
    with pytest.raises(TypeError):
        write_json({"x": object()}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    write_text("héllo\n", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "run.json"]
    assert not math.isnan(back["n"])


def test_prepare_output_dir_creates_folders(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b", ["x.png", "frames/t=10.png"], overwrite=False)
    assert out == tmp_path / "a" / "b" and (out / "frames").is_dir()


def test_prepare_output_dir_refuses_a_file(tmp_path):
    (tmp_path / "out").write_text("I am a file")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        prepare_output_dir(tmp_path / "out", ["x.png"], overwrite=True)


def test_prepare_output_dir_refuses_to_overwrite_and_writes_nothing(tmp_path):
    names = [f"img{i}.png" for i in range(9)]
    for name in names[:7]:
        (tmp_path / name).write_bytes(b"old")
    with pytest.raises(OutputError) as info:
        prepare_output_dir(tmp_path, [*names, "sub/new.png"], overwrite=False)
    message = str(info.value)
    assert "7 output files already exist" in message
    assert "img0.png, img1.png, img2.png, img3.png, img4.png and 2 more" in message
    assert "img5.png" not in message and "--overwrite" in message and "another folder" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == names[:7]  # no sub/ created
    assert prepare_output_dir(tmp_path, [*names, "sub/new.png"], overwrite=True) == tmp_path
    assert (tmp_path / "sub").is_dir() and (tmp_path / "img0.png").read_bytes() == b"old"


def test_prepare_output_dir_refuses_collisions_and_folders(tmp_path):
    with pytest.raises(OutputError, match="same output file"):
        prepare_output_dir(tmp_path / "o", ["face.png", "face.png"], overwrite=True)
    (tmp_path / "o" / "face.png").mkdir(parents=True)
    with pytest.raises(OutputError, match="is a folder"):
        prepare_output_dir(tmp_path / "o", ["face.png"], overwrite=True)
    with pytest.raises(ValueError):
        prepare_output_dir(tmp_path / "o", ["../escape.png"], overwrite=True)


def test_save_pil_writes_png(tmp_path):
    im = Image.fromarray(smooth_rgb())
    save_pil(im, tmp_path / "p.png")
    assert np.array_equal(pixels_of(tmp_path / "p.png"), smooth_rgb())
