"""Sharing one batch run between processes through files in a folder they all see.

No server and no collective: every mechanism here is a file with an OS lock (``flock``), so it
works across the nodes of a cluster on a shared file system and survives the death of any
process (the OS releases a dead process's locks; a lock is never taken over while its holder
lives).

* :class:`WorkQueue`: an input is run by the process that *claims* it: it creates the input's
  claim file and holds an exclusive lock on it while it runs the input, then marks it finished.
  A claim file that is not locked and not finished belongs to a process that died: it is taken
  over (at most ``max_attempts`` runs of one input, so an input that kills its process, e.g. out
  of memory, cannot kill every process in turn).
* :class:`Journal`: each process appends one JSON line per finished input to a file of its own;
  :class:`JournalReader` reads every journal of a folder incrementally (a torn last line, from a
  process killed while writing it, is ignored).
* :func:`hold_lock`, :func:`held_locks`: a lock file per process, so that another run can tell
  this one is still alive even when the process holding the output folder's lock is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guidestack.engine.errors import OutputError
from guidestack.io.outputs import _jsonable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per run
    fcntl = None  # type: ignore[assignment]

#: the folder, inside an output folder, that holds the state of the runs using it
STATE_DIR = ".guidestack-run"
#: how many processes may die running one input before it is given up as failed
MAX_ATTEMPTS = 2


def claim_key(name: str) -> str:
    """The claim file name of input ``name`` (fixed length: any input name fits)."""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:32]


def holder_info(**extra: Any) -> dict[str, Any]:
    """Who holds a lock or a claim, for messages: pid, host, start time, command."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
        **extra,
    }


def _read(fd: int) -> dict[str, Any] | None:
    data = os.pread(fd, 1 << 16, 0)
    try:
        info = json.loads(data.decode("utf-8", "replace") or "null")
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _write(fd: int, info: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info, ensure_ascii=True).encode(), 0)


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclass
class Claim:
    """An input this process holds: ``attempt`` counts the processes that started it (1 unless
    the process running it before died); ``given_up`` when that happened ``max_attempts`` times."""

    name: str
    attempt: int
    fd: int
    given_up: bool = False


class RunOver(Exception):
    """The queue's folder is gone: the run ended and was cleaned up."""


class WorkQueue:
    """The inputs of one run, claimed one by one by the processes sharing it.

    ``order`` is this process's visiting order (its own share first, then what it may take from
    the others); each input is claimed by exactly one live process at a time, and run again only
    when the process that claimed it died before finishing it.
    """

    def __init__(
        self, folder: str | Path, order: Sequence[str], *, max_attempts: int = MAX_ATTEMPTS
    ):
        self.folder = Path(folder) / "claims"
        self.remaining = list(order)
        self.max_attempts = max_attempts
        self.held: dict[str, Claim] = {}
        self.folder.mkdir(parents=True, exist_ok=True)

    def claim(self, count: int) -> list[Claim]:
        """Up to ``count`` inputs nobody else holds or finished (empty: nothing left to take,
        though inputs held by live processes may still be running)."""
        claims: list[Claim] = []
        keep: list[str] = []
        for index, name in enumerate(self.remaining):
            if len(claims) == count:
                keep += self.remaining[index:]
                break
            try:
                state = self._try(name)
            except RunOver:
                keep += self.remaining[index:]
                break
            if isinstance(state, Claim):
                claims.append(state)
                self.held[name] = state
            elif state == "held":
                keep.append(name)  # its holder may still die: visit it again next time
        self.remaining = keep
        return claims

    def _try(self, name: str) -> Claim | str:
        path = self.folder / claim_key(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as exc:
            raise RunOver(str(path)) from exc
        except OSError as exc:
            raise OutputError(f"cannot create the claim {path}: {exc.strerror or exc}") from exc
        if not _try_lock(fd):
            os.close(fd)
            return "held"
        info = _read(fd) or {}
        if info.get("finished"):
            os.close(fd)
            return "finished"
        attempt = int(info.get("attempt", 0)) + 1
        given_up = attempt > self.max_attempts
        _write(fd, {"name": name, **holder_info(), "attempt": attempt})
        return Claim(name, attempt, fd, given_up)

    def finish(self, claim: Claim, status: str) -> None:
        """Mark ``claim`` finished (``status`` as recorded) and release it."""
        self.held.pop(claim.name, None)
        try:
            _write(claim.fd, {"name": claim.name, "finished": status, "attempt": claim.attempt})
        finally:
            os.close(claim.fd)

    def release(self) -> None:
        """Give back every input held but not finished (interrupted, not died: the next
        process starts it as a first attempt)."""
        for claim in list(self.held.values()):
            with contextlib.suppress(OSError):
                _write(claim.fd, {"name": claim.name, "attempt": claim.attempt - 1})
            with contextlib.suppress(OSError):
                os.close(claim.fd)
        self.held.clear()


# --- journals ------------------------------------------------------------------------------------


class Journal:
    """One process's record of the inputs it finished: one JSON line each, appended and synced
    before the input's claim is released.  The first line is ``header``."""

    def __init__(self, path: str | Path, header: dict[str, Any]):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create {self.path}: {exc.strerror or exc}") from exc
        if os.fstat(self.fd).st_size == 0:
            self.append({"journal": 1, **header})

    def append(self, record: dict[str, Any]) -> None:
        # ASCII JSON: a name that is not UTF-8 is written as \\udcXX and reads back the same
        line = json.dumps(_jsonable(record), ensure_ascii=True, allow_nan=False) + "\n"
        try:
            os.write(self.fd, line.encode("ascii"))
            os.fsync(self.fd)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class JournalReader:
    """Every record appended to the journals (``*.jsonl``) under ``folders`` since the last
    call, from journals whose header has ``expect``'s values."""

    def __init__(self, folders: Iterable[str | Path], expect: dict[str, Any] | None = None):
        self.folders = [Path(f) for f in folders]
        self.expect = expect or {}
        self.offsets: dict[Path, int] = {}
        self.rejected: set[Path] = set()

    def read(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for folder in self.folders:
            for path in sorted(folder.glob("*.jsonl")):
                if path not in self.rejected:
                    records += self._read(path)
        return records

    def _read(self, path: Path) -> list[dict[str, Any]]:
        offset = self.offsets.get(path, 0)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a torn last line is left for later (or forever)
        out = []
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(record, dict):
                continue
            if "journal" in record:
                if any(record.get(k) != v for k, v in self.expect.items()):
                    self.rejected.add(path)
                    return []
                continue
            out.append(record)
        self.offsets[path] = offset + end
        return out


# --- one lock per process ------------------------------------------------------------------------


def hold_lock(path: str | Path, info: dict[str, Any]) -> int:
    """Take the exclusive lock on ``path`` (waiting for a prober to let go), write ``info``
    into it; the returned descriptor holds it until closed or the process ends."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot create the lock {path}: {exc.strerror or exc}") from exc
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    _write(fd, info)
    return fd


def held_locks(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """What is written in each of ``paths`` that a live process holds locked."""
    held = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    held.append(_read(fd) or {"lock": str(path)})
        finally:
            os.close(fd)
    return held


def wait_unlocked(path: str | Path, poll: float = 0.5, tick: Any = None) -> None:
    """Return once no process holds ``path`` locked (calling ``tick()`` every ``poll`` s)."""
    while held_locks([path]):
        if tick is not None:
            tick()
        time.sleep(poll)
