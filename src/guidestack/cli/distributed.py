"""``guidestack run`` under a launcher: the processes of one launch agree before any work.

Only the start needs the processes together: every process checks its arguments, recipe, prior
and device, then the first process (rank 0) takes the output folder (its lock, ``--resume``,
the checks that nothing is overwritten, the first ``run.json``) and tells the others the plan.
That exchange goes through ``torch.distributed`` (gloo, on the CPU, whatever the devices) and
the process group is closed before the first input runs: from then on the processes share work
through files only (:mod:`guidestack.io.claims`), so one that dies cannot block the others.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from guidestack import GuidestackError, UsageError
from guidestack.distributed import World
from guidestack.progress import Progress

T = TypeVar("T")

#: a file in the output folder where srun's processes meet when no MASTER_ADDR is given
RENDEZVOUS = ".guidestack-rendezvous"


class PeerError(GuidestackError):
    """Another process of the launch failed before the run started, so this one stops too."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _failure(rank: int, exc: BaseException) -> tuple[int, int, str]:
    if isinstance(exc, GuidestackError):
        return rank, exc.exit_code, str(exc)
    return rank, 1, f"unexpected {type(exc).__name__}: {exc}"


class Launch:
    """The processes of one launch, together until :meth:`close` (a no-op for one process)."""

    def __init__(self, world: World, outdir: Path):
        self.world = world
        self.outdir = outdir
        self.created = False
        self.group: Any = None
        self.open = False

    def __enter__(self) -> Launch:
        if self.world.size > 1:
            self._connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self) -> None:
        import torch.distributed as dist

        if not dist.is_available():  # pragma: no cover - torch built without distributed
            raise UsageError("this torch has no torch.distributed: run one process")
        if dist.is_initialized():  # a Python caller's group (maybe nccl): talk over gloo
            self.group = dist.new_group(backend="gloo")
        else:
            store, _, _ = next(
                dist.rendezvous(self._init_method(), self.world.rank, self.world.size)
            )
            # torchrun's restarts (--max-restarts) reuse its store: keys of the attempt that
            # failed would point this one's processes at dead peers
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(
                "gloo",
                store=dist.PrefixStore(f"guidestack/{attempt}", store),
                rank=self.world.rank,
                world_size=self.world.size,
            )
            self.created = True
        self.open = True

    def _init_method(self) -> str:
        env = os.environ
        if env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
            return "env://"
        if self.world.launcher == "slurm":
            # a requeued job reuses its job and step ids: the restart count tells them apart
            step = ".".join(
                env.get(key, "0")
                for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")
            )
            self.outdir.mkdir(parents=True, exist_ok=True)
            return (self.outdir / f"{RENDEZVOUS}-{step}").resolve().as_uri()
        raise UsageError(
            f"{self.world.size} processes but no MASTER_ADDR/MASTER_PORT to meet at: start them "
            "with torchrun or accelerate launch, or set MASTER_ADDR and MASTER_PORT"
        )

    def close(self) -> None:
        """End the exchange: from here on the processes share only files."""
        if not self.open:
            return
        import torch.distributed as dist

        self.open = False
        if self.created:
            dist.destroy_process_group()
        elif self.group is not None:
            dist.destroy_process_group(self.group)
        if self.world.launcher == "slurm" and self.world.rank == 0:
            for stale in self.outdir.glob(f"{RENDEZVOUS}-*"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def together(self, work: Callable[[], T]) -> T:
        """``work()`` on every process; if it fails on any, every process stops with an error
        (the failing one with its own)."""
        value: Any = None
        failure = None
        try:
            value = work()
        except Exception as exc:  # noqa: BLE001 - shared with the others, then raised here
            if not self.open:
                raise
            failure, mine = _failure(self.world.rank, exc), exc
        if self.open:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world.size
            dist.all_gather_object(gathered, failure, group=self.group)
            if failure is not None:
                raise mine
            first = next((f for f in gathered if f is not None), None)
            if first is not None:
                rank, code, message = first
                raise PeerError(f"stopped because process {rank} failed: {message}", code)
        return value

    def from_first(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0, its value (or its failure) handed to every process."""
        if not self.open:
            return work()
        import torch.distributed as dist

        box: list[Any] = [None]
        failure = None
        if self.world.rank == 0:
            try:
                box[0] = ("ok", work())
            except Exception as exc:  # noqa: BLE001 - shared with the others, then raised here
                failure = exc
                box[0] = ("failed", _failure(0, exc))
        dist.broadcast_object_list(box, src=0, group=self.group)
        if failure is not None:
            raise failure
        kind, value = box[0]
        if kind == "failed":
            rank, code, message = value
            raise PeerError(f"stopped because process {rank} failed: {message}", code)
        return value


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a launcher stopping its processes, ``scancel``) ends the run as Ctrl-C does:
    the input being written is removed, its claim given back, the locks released."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def reporter(world: World) -> Callable[[str], None]:
    """``say(message)`` on stderr, prefixed with the rank when there are several processes."""
    prefix = f"[rank {world.rank}] " if world.size > 1 else ""

    def say(message: str) -> None:
        from tqdm import tqdm  # clears an open progress bar, prints, redraws it

        tqdm.write(f"{prefix}{message}", file=sys.stderr)
        sys.stderr.flush()

    return say


class RunProgress(Progress):
    """One bar for a whole multi-process run, on rank 0: inputs finished by every process (read
    from their journals through ``count()``), with rank 0's current image and step as a
    postfix; the other processes show none, so N bars never interleave."""

    def __init__(self, enabled: bool, total: int, count: Callable[[], int], every: float = 0.5):
        super().__init__(enabled=False)  # the per-image bar of Progress stays off
        self.count, self.every, self.last = count, every, 0.0
        self.label, self.steps, self.step = "", 0, 0
        self.run_bar = None
        if enabled:
            from tqdm import tqdm

            self.run_bar = tqdm(
                total=total, desc="run", file=sys.stderr, unit="input", dynamic_ncols=True
            )

    def start(self, label: str, total: int) -> None:
        self.label, self.steps, self.step = label, total, 0
        self.refresh()

    def advance(self, postfix: dict[str, Any] | None = None) -> None:
        self.step += 1
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.run_bar is None or (not force and now - self.last < self.every):
            return
        self.last = now
        done = self.count()
        self.run_bar.update(done - self.run_bar.n)
        if self.label:
            self.run_bar.set_postfix_str(
                f"rank 0: {self.label} {self.step}/{self.steps}", refresh=False
            )
        self.run_bar.refresh()

    def finish(self) -> None:
        if self.run_bar is not None:
            self.label = ""
            self.refresh(force=True)
            self.run_bar.close()
            self.run_bar = None
