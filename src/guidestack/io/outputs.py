"""Writing results without ever losing or half-writing a file.

Every file is written to a temporary file in the same folder and moved into place with
``os.replace`` (atomic on POSIX and Windows), so a crash, a full disk or an encoder error leaves
either the old file or the new one, never a truncated PNG, and no temporary file behind.
:func:`prepare_output_dir` refuses up front, before anything is written, when a run would
overwrite results the user did not say could go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from guidestack.engine.errors import NonFiniteError, OutputError

MAX_LISTED = 5


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then move it onto ``path``.

    On any failure the temporary file is removed and ``path`` is untouched; ``OSError`` becomes
    :class:`OutputError` naming the file, other exceptions propagate unchanged.  The temporary
    name is short and fixed in length, so any name the file system accepts can be written.
    """
    path = Path(path)
    tmp = path.with_name(f".gs-{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o666)  # 0o666 so the umask, not us, decides permissions
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    return path


def tensor_to_pil(tensor: torch.Tensor, *, kind: str = "image") -> Image.Image:
    """``[C, H, W]`` (or ``[1, C, H, W]``) to an 8-bit PIL image.

    ``kind="image"``: values in [-1, 1], 3 channels -> RGB, 1 channel -> L.
    ``kind="mask"``: one channel in [0, 1] (1 = missing) -> L, white = missing.
    """
    x = tensor.detach()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3) or (kind == "mask" and x.shape[0] != 1):
        expected = "[1, H, W]" if kind == "mask" else "[3, H, W] or [1, H, W]"
        raise ValueError(f"expected a {kind} of shape {expected}, got {tuple(tensor.shape)}")
    x = x.to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"the {kind} to save contains NaN or infinite values")
    x = x.clamp(0.0, 1.0) if kind == "mask" else (x.clamp(-1.0, 1.0) + 1.0) / 2.0
    data = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if data.shape[-1] == 1:
        return Image.fromarray(np.ascontiguousarray(data[..., 0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(data), mode="RGB")


def save_pil(image: Image.Image, path: str | Path, *, format: str = "PNG") -> Path:
    """Write a PIL image atomically (PNG unless told otherwise)."""
    return atomic_write(path, lambda f: image.save(f, format=format))


def save_image(tensor: torch.Tensor, path: str | Path) -> Path:
    """Write ``[C, H, W]`` in [-1, 1] as an 8-bit PNG, atomically."""
    return save_pil(tensor_to_pil(tensor, kind="image"), path)


def save_mask(mask: torch.Tensor, path: str | Path) -> Path:
    """Write ``[1, H, W]`` in [0, 1] (1 = missing) as an 8-bit PNG, white = missing."""
    return save_pil(tensor_to_pil(mask, kind="mask"), path)


def write_text(text: str, path: str | Path, *, encoding: str = "utf-8") -> Path:
    """Write text atomically."""
    data = text.encode(encoding)
    return atomic_write(path, lambda f: f.write(data))


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON, atomically.

    Paths, tensors, numpy values, dataclasses, sets and tuples are converted; NaN and infinities
    become the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file stays valid JSON.  The object
    is serialised before the file is opened, so an unserialisable value writes nothing.
    """
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    # a file name that is not UTF-8 holds lone surrogates: backslashreplace writes them as the
    # JSON escape \udcXX, which reads back as the same name
    data = text.encode("utf-8", "backslashreplace")
    return atomic_write(path, lambda f: f.write(data))


def prepare_output_dir(outdir: str | Path, planned_names: Iterable[str], overwrite: bool) -> Path:
    """Create ``outdir`` for a run that will write ``planned_names`` (relative paths) into it.

    Refuses, before writing anything, when ``outdir`` is a file, when two outputs would share a
    name, when a planned file exists and ``overwrite`` is False, or when a planned file is an
    existing folder.  Sub-folders of planned names are created.
    """
    outdir = Path(outdir)
    names = list(planned_names)
    for name in names:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"planned output name {name!r} must be a relative path inside outdir")
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(
            f"output folder {outdir} exists and is a file, not a folder: choose another --outdir"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise OutputError(
            f"two inputs would write the same output file in {outdir}: "
            f"{_listing(duplicates)}; rename one of the inputs"
        )
    folders = [n for n in names if (outdir / n).is_dir()]
    if folders:
        raise OutputError(
            f"cannot write outputs in {outdir}: {_listing(folders)} "
            f"{'is a folder' if len(folders) == 1 else 'are folders'}; choose another --outdir"
        )
    existing = [n for n in names if (outdir / n).exists()]
    if existing and not overwrite:
        count = len(existing)
        raise OutputError(
            f"{count} output file{'s' if count != 1 else ''} already exist{'s' if count == 1 else ''}"
            f" in {outdir}: {_listing(existing)}; pass --overwrite to replace "
            f"{'it' if count == 1 else 'them'} or choose another folder"
        )
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        for parent in sorted({(outdir / n).parent for n in names}):
            parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {outdir}: {e.strerror or e}") from e
    if not os.access(outdir, os.W_OK):
        raise OutputError(f"output folder {outdir} is not writable")
    return outdir


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if math.isnan(obj) else f"{obj}")
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=str) if isinstance(obj, set | frozenset) else obj
        return [_jsonable(v) for v in items]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray | np.generic):
        return _jsonable(obj.tolist())
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic models
        return _jsonable(obj.model_dump(mode="json"))
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


# --- one run per folder ------------------------------------------------------------------------

#: the lock file a run holds in its output folder
LOCK_NAME = ".guidestack.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, warn: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for one run: a second run into it is refused.

    The lock is an OS lock (``flock``) on ``folder/.guidestack.lock``, which holds the owner's
    pid, host, start time and command for the refusal message: the OS releases it when its
    process ends however it ends, so a lock left by a killed run is stale by construction; it
    is taken over and reported through ``warn``.  Platforms without ``fcntl`` run unlocked.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"output folder {folder} exists and is a file, not a folder: choose another --output"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {folder}: {e.strerror or e}") from e
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield folder / LOCK_NAME
        return
    path = folder / LOCK_NAME
    fd = _acquire(path, fcntl)
    try:
        previous = _holder(os.read(fd, 4096))
        if previous and previous.get("pid") != os.getpid() and warn is not None:
            warn(
                f"{folder} had a stale lock from a run that ended without releasing it "
                f"({_describe(previous)}); taking it over"
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _acquire(path: Path, fcntl: Any) -> int:
    """An fd holding the flock on ``path`` (the file at ``path``, not one unlinked meanwhile)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot create the lock {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.read(fd, 4096))
            os.close(fd)
            raise OutputError(
                f"output folder {path.parent} is in use by another guidestack run "
                f"({_describe(holder) if holder else 'starting'}); wait for it to end or choose "
                "another --output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we opened it: lock the new one


def _holder(data: bytes) -> dict[str, Any] | None:
    try:
        info = json.loads(data.decode("utf-8", "replace") or "null")
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict[str, Any]) -> str:
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("started"):
        parts.append(f"started {info['started']}")
    if info.get("command"):
        parts.append(f"command: {info['command']}")
    return ", ".join(parts)
