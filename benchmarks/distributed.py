"""Wall time of one `guidestack run` by 1 and by 2 CPU processes on the same inputs.

Three ways to run the same command, interleaved in each round so the shared machine's load
falls on all of them alike: (a) one plain process (torch's default threads), (b) one process
under torch.distributed.run (which sets OMP_NUM_THREADS=1), (c) two processes under
torch.distributed.run.  Prints the median wall times (start-up included, as a user waits for
it), the ratios, and checks that (b) and (c) wrote byte-identical files.

    python benchmarks/distributed.py [--inputs 12] [--steps 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    ROOT / "examples/faces/astronaut_degraded.png",
    ROOT / "examples/faces/grace_hopper_degraded.png",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipe", default="restore")
    args = parser.parse_args()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_"))
    }
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node"]
    command = ["-m", "guidestack", "run", args.recipe]
    options = ["--prior", "gaussian-faces-64", "--steps", str(args.steps), "--quiet"]
    ways = {
        "1 process": [sys.executable],
        "1 process, torchrun": [*launch, "1"],
        "2 processes, torchrun": [*launch, "2"],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(args.inputs):
            shutil.copy(SOURCES[i % 2], folder / f"face{i:03d}.png")
        for round_ in range(args.rounds):
            for k, (name, prefix) in enumerate(ways.items()):
                out = Path(tmp) / f"out{k}"
                shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                subprocess.run(
                    [*prefix, *command, str(folder), "-o", str(out), *options],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                times[name].append(time.perf_counter() - started)
            print(
                f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items())
            )
        same = all(
            (Path(tmp) / "out1" / p.name).read_bytes() == p.read_bytes()
            for p in (Path(tmp) / "out2").glob("*.png")
        )
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"\n{args.inputs} inputs, {args.recipe}, {args.steps} steps, {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs"
    )
    print("| run | median wall time (s) | ratio to 2 processes |")
    print("|---|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.1f} | {value / median['2 processes, torchrun']:.2f} |")
    print(f"\noutputs of 1 and 2 processes under torchrun byte-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
