"""A batch run killed half way resumes: finished inputs are not redone, and the final outputs
equal those of an uninterrupted run (per-input seeds derive from the run seed and file name)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import EXAMPLES

from guidestack.cli.main import main

ARGS = ["restore", "--prior", "gaussian-faces-64", "--steps", "60", "--seed", "7", "--quiet"]


def make_inputs(folder, n=6):
    folder.mkdir()
    sources = [EXAMPLES / "astronaut_degraded.png", EXAMPLES / "grace_hopper_degraded.png"]
    for i in range(n):
        shutil.copy(sources[i % 2], folder / f"face{i}.png")
    return folder


def done_names(out):
    try:
        report = json.loads((out / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return set()
    return {i["name"] for i in report["inputs"] if i["status"] == "done"}


def test_killed_run_resumes_without_redoing_finished_inputs(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    # one thread, as this test process (conftest): convolutions may round differently with
    # another thread count, and the outputs are compared byte for byte
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guidestack",
            "run",
            ARGS[0],
            str(inputs),
            "-o",
            str(out),
            *ARGS[1:],
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 300
    while len(done_names(out)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = done_names(out)
    assert 2 <= len(finished) < 6, finished
    stamps = {n: (out / f"{n}.png").stat().st_mtime_ns for n in finished}

    # without --resume or --overwrite the folder is protected
    assert main(["run", ARGS[0], str(inputs), "-o", str(out), *ARGS[1:]]) == 2
    assert main(["run", ARGS[0], str(inputs), "-o", str(out), *ARGS[1:], "--resume"]) == 0
    report = json.loads((out / "run.json").read_text())
    assert all(i["status"] == "done" for i in report["inputs"])
    assert {i["name"] for i in report["inputs"] if i.get("resumed")} == finished
    for name, stamp in stamps.items():
        assert (out / f"{name}.png").stat().st_mtime_ns == stamp, f"{name} was redone"

    clean = tmp_path / "clean"
    assert main(["run", ARGS[0], str(inputs), "-o", str(clean), *ARGS[1:]]) == 0
    for i in range(6):
        assert (out / f"face{i}.png").read_bytes() == (clean / f"face{i}.png").read_bytes(), i


def test_resume_refuses_a_different_run(tmp_path, capsys):
    inputs = make_inputs(tmp_path / "in", n=1)
    out = tmp_path / "out"
    assert main(["run", ARGS[0], str(inputs), "-o", str(out), *ARGS[1:]]) == 0
    code = main(["run", ARGS[0], str(inputs), "-o", str(out), *ARGS[1:], "--seed", "8", "--resume"])
    assert code == 2
    assert "another recipe, prior, seed" in capsys.readouterr().err


def test_resume_without_a_run_starts_one_and_overwrites_nothing(tmp_path, capsys):
    """`--resume` in every launch (torchrun --max-restarts, a requeued SLURM job): with no
    run.json it is a new run, which still refuses to replace files it did not write."""
    inputs = make_inputs(tmp_path / "in", n=1)
    fresh = tmp_path / "fresh"
    assert main(["run", ARGS[0], str(inputs), "-o", str(fresh), *ARGS[1:], "--resume"]) == 0
    assert "new run" in capsys.readouterr().err
    assert (fresh / "face0.png").is_file() and (fresh / "run.json").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "face0.png").write_bytes(b"not ours")
    assert main(["run", ARGS[0], str(inputs), "-o", str(foreign), *ARGS[1:], "--resume"]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (foreign / "face0.png").read_bytes() == b"not ours"
