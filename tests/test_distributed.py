"""Many processes, one run (docs/distributed.md): processes launched by torch.distributed.run
(torchrun's module) or as srun would start them write what one process writes, share one
run.json, survive the death of one of them, and resume with any number of processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dist_worker
import pytest
import torch
from conftest import EXAMPLES, REPO

import guidestack as gs
from guidestack.cli.main import main
from guidestack.distributed import World, plan, run_distributed, shard, visiting_order, world
from guidestack.engine import registry as registry_module
from guidestack.engine.errors import UsageError
from guidestack.engine.registry import load_registry
from guidestack.io.claims import STATE_DIR, Journal, JournalReader, WorkQueue, holder_info
from guidestack.io.outputs import LOCK_NAME

WORKER = str(REPO / "tests" / "dist_worker.py")
ARGS = ["--prior", "gaussian-faces-64", "--steps", "4", "--quiet"]
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
WAIT = 300  # seconds: the machine is shared and slow at times; the work itself is small


def make_inputs(folder: Path, n: int = 6) -> Path:
    folder.mkdir()
    sources = [EXAMPLES / "astronaut_degraded.png", EXAMPLES / "grace_hopper_degraded.png"]
    for i in range(n):
        shutil.copy(sources[i % 2], folder / f"face{i}.png")
    return folder


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables (pytest may itself run under one)."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher + ("SLURM_",))}
    return {**env, **extra}


@contextlib.contextmanager
def one_thread():
    """A single process with the threads torchrun gives each of its processes
    (OMP_NUM_THREADS=1): a float sum split over another number of threads may differ in its
    last bit, as it may on another CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def report(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def recorded(out: Path) -> set[str]:
    """Inputs recorded done, in run.json or in the journals of a run that did not end."""
    names = set()
    with contextlib.suppress(OSError, json.JSONDecodeError):
        names |= {e["name"] for e in report(out)["inputs"] if e["status"] == "done"}
    for journal in (out / STATE_DIR).glob("*/*.jsonl"):
        for line in journal.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if entry.get("status") == "done":
                    names.add(entry["name"])
    return names


def nothing_left(out: Path) -> None:
    assert not (out / STATE_DIR).exists() and not (out / LOCK_NAME).exists()
    assert not list(out.glob(".gs-*")) and not list(out.glob(".guidestack-rendezvous*"))


@pytest.fixture
def paced(monkeypatch):
    """This process's registry with the workers' test stage (for in-process resumes)."""
    reg = load_registry(blocked=set(), entry_points=False)
    reg.add_stage(dist_worker.Pace)
    monkeypatch.setattr(registry_module, "_DEFAULT", reg)
    return reg


# --- processes launched by torch.distributed.run -----------------------------------------------


def test_two_processes_write_byte_for_byte_what_one_writes(tmp_path):
    """With --deterministic (a batch equals its single runs bit for bit) the outputs do not
    depend on the process count nor on how the inputs were batched."""
    inputs = make_inputs(tmp_path / "in")
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [*LAUNCH, "-m", "guidestack", "run", "restore", str(inputs), "-o", str(two), *ARGS]
    cmd.append("--deterministic")
    proc = subprocess.run(
        [*cmd, "--batch-size", "2"], env=clean_env(), capture_output=True, text=True, timeout=WAIT
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 of 6 image(s) restored" in proc.stderr and "by 2 processes" in proc.stderr
    with one_thread():
        assert main(["run", "restore", str(inputs), "-o", str(one), *ARGS, "--deterministic"]) == 0
    written = sorted(p.name for p in one.glob("*.png"))
    assert len(written) == 12 and written == sorted(p.name for p in two.glob("*.png"))
    for name in written:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    entries = report(two)["inputs"]
    assert report(two)["processes"] == 2 and [e["name"] for e in entries] == sorted(
        f"face{i}" for i in range(6)
    )
    assert {e["status"] for e in entries} == {"done"} and {e["rank"] for e in entries} == {0, 1}
    single = {e["name"]: e for e in report(one)["inputs"]}
    for entry in entries:  # same seeds, same files: the checksums resume relies on agree
        assert entry["seed"] == single[entry["name"]]["seed"]
        assert entry["checksums"] == single[entry["name"]]["checksums"]
    nothing_left(two)


def test_an_input_that_fails_on_one_process_fails_alone(tmp_path, paced):
    inputs = make_inputs(tmp_path / "in")
    recipe = dist_worker.recipe(tmp_path, fail="face3")  # face3 is in process 1's share
    out = tmp_path / "out"
    proc = subprocess.run(
        [*LAUNCH, WORKER, "run", recipe, str(inputs), "-o", str(out), *ARGS],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 1, proc.stderr  # the launcher's status says an input failed
    assert "[rank 1] error: stage 'test-pace' failed" in proc.stderr
    assert "5 of 6 image(s) restored" in proc.stderr
    entries = {e["name"]: e for e in report(out)["inputs"]}
    assert entries["face3"]["status"] == "failed" and entries["face3"]["rank"] == 1
    assert "told to fail on face3" in entries["face3"]["error"]
    assert all(entries[f"face{i}"]["status"] == "done" for i in (0, 1, 2, 4, 5))
    assert any(e["rank"] == 1 and e["status"] == "done" for e in entries.values())
    assert not (out / "face3.png").exists()
    with one_thread():  # one process fails the same input and writes the same others
        assert main(["run", recipe, str(inputs), "-o", str(tmp_path / "one"), *ARGS]) == 1
    for i in (0, 1, 2, 4, 5):
        assert (out / f"face{i}.png").read_bytes() == (
            tmp_path / "one" / f"face{i}.png"
        ).read_bytes()


def rank_pid(out: Path, rank: int) -> int:
    """The pid in process ``rank``'s lock file (it writes it before taking any input)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for lock in (out / STATE_DIR).glob(f"*/rank-{rank}.lock"):
            with contextlib.suppress(OSError, json.JSONDecodeError, KeyError):
                return int(json.loads(lock.read_text())["pid"])
        time.sleep(0.05)
    raise AssertionError(f"process {rank} never started")


def test_a_killed_process_then_a_resume_with_one_process(tmp_path, paced):
    """SIGKILL one of two processes mid-run (torchrun then stops the other); `--resume` with
    one process completes the set and keeps every input already recorded done."""
    inputs = make_inputs(tmp_path / "in")
    recipe = dist_worker.recipe(tmp_path, delay=0.25)  # about 1 s per input
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*LAUNCH, WORKER, "run", recipe, str(inputs), "-o", str(out), *ARGS],
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        victim = rank_pid(out, 1)
        deadline = time.monotonic() + WAIT
        while len(recorded(out)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        err = proc.communicate(timeout=WAIT)[1]
    finally:
        proc.kill()
    assert proc.returncode != 0, err
    finished = recorded(out)
    assert 2 <= len(finished) < 6, (finished, err)
    for png in out.glob("face*.png"):  # nothing half-written: every output decodes whole
        gs.read_image(png)
    stamps = {n: (out / f"{n}.png").stat().st_mtime_ns for n in finished}

    assert main(["run", recipe, str(inputs), "-o", str(out), *ARGS, "--resume"]) == 0
    entries = report(out)["inputs"]
    assert all(e["status"] == "done" for e in entries) and len(entries) == 6
    assert {e["name"] for e in entries if e.get("resumed")} == finished
    for name, stamp in stamps.items():
        assert (out / f"{name}.png").stat().st_mtime_ns == stamp, f"{name} was redone"
    nothing_left(out)


def test_torchrun_restarts_the_processes_and_the_run_goes_on(tmp_path):
    """With --max-restarts and --resume, torchrun restarts both processes after one is killed
    and the one command completes the set, keeping what was recorded done."""
    inputs = make_inputs(tmp_path / "in")
    recipe = dist_worker.recipe(tmp_path, delay=0.2)
    out = tmp_path / "out"
    restarting = [*LAUNCH[:-1], "2", "--max-restarts", "1"]
    proc = subprocess.Popen(
        [*restarting, WORKER, "run", recipe, str(inputs), "-o", str(out), *ARGS, "--resume"],
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        victim = rank_pid(out, 1)
        deadline = time.monotonic() + WAIT
        while len(recorded(out)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        before = recorded(out)
        os.kill(victim, signal.SIGKILL)
        err = proc.communicate(timeout=WAIT)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    entries = report(out)["inputs"]
    assert [e["status"] for e in entries] == ["done"] * 6, err
    assert before <= {e["name"] for e in entries if e.get("resumed")}
    nothing_left(out)


# --- processes started as srun starts them: the others go on when one dies ---------------------


def test_when_a_process_dies_the_others_finish_its_inputs(tmp_path, paced):
    """srun (unlike torchrun) leaves the other processes running: they take over the input the
    dead one held and the inputs it had not reached; run.json is complete, the exit code 0."""
    inputs = make_inputs(tmp_path / "in")
    recipe = dist_worker.recipe(tmp_path, delay=0.25)
    out = tmp_path / "out"
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "run", recipe, str(inputs), "-o", str(out), *ARGS],
            env=clean_env(**slurm, SLURM_PROCID=str(r), SLURM_LOCALID=str(r), OMP_NUM_THREADS="1"),
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        rank_pid(out, 1)
        deadline = time.monotonic() + WAIT
        journal = None
        while time.monotonic() < deadline and procs[1].poll() is None:
            journal = next((out / STATE_DIR).glob("*/rank-1.jsonl"), None)
            if journal is not None and journal.read_text().count("\n") >= 2:  # header + 1 input
                break
            time.sleep(0.05)
        time.sleep(0.3)  # well into its next input
        procs[1].send_signal(signal.SIGKILL)
        err = procs[0].communicate(timeout=WAIT)[1]
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode == 0, err
    entries = report(out)["inputs"]
    assert [e["status"] for e in entries] == ["done"] * 6, err
    assert any(e["rank"] == 1 for e in entries)  # it did some before it died
    taken_over = [e for e in entries if e.get("attempt") == 2]
    assert len(taken_over) == 1 and taken_over[0]["rank"] == 0
    nothing_left(out)
    with one_thread():
        assert main(["run", recipe, str(inputs), "-o", str(tmp_path / "one"), *ARGS]) == 0
    for i in range(6):
        assert (out / f"face{i}.png").read_bytes() == (
            tmp_path / "one" / f"face{i}.png"
        ).read_bytes()


def test_a_second_launch_is_refused_while_any_process_of_the_first_lives(tmp_path, capsys):
    """The folder lock of the first process is gone (it died) but another process of its
    launch still writes: a new run into the folder is refused, naming that process."""
    good = make_inputs(tmp_path / "in", n=1)
    out = tmp_path / "out"
    state = out / STATE_DIR / "0123456789abcdef"
    state.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from guidestack.io.claims import hold_lock, holder_info\n"
            "hold_lock(sys.argv[1], holder_info(rank=1))\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            str(state / "rank-1.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", "restore", str(good), "-o", str(out), *ARGS]) == 2
        err = capsys.readouterr().err
        assert "in use" in err and f"pid {holder.pid}" in err and "process 1" in err
        assert not (out / "face0.png").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", "restore", str(good), "-o", str(out), *ARGS]) == 0  # it is gone now
    nothing_left(out)


# --- the parts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, World()),
        (
            {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"},
            World(3, 8, 1, "torchrun"),
        ),
        ({"RANK": "1", "WORLD_SIZE": "2"}, World(1, 2, 1, "env")),
        (
            {"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "6"},
            World(5, 6, 0, "slurm"),
        ),
        (  # inside an sbatch script, not an srun step: one process
            {"SLURM_PROCID": "0", "SLURM_NTASKS": "8"},
            World(),
        ),
        (  # torchrun started by srun, one per node: torchrun's numbering wins
            {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "SLURM_PROCID": "1"},
            World(9, 16, 1, "env"),
        ),
    ],
)
def test_the_launchers_environment_gives_the_place(env, expected):
    assert world(env) == expected


def test_a_place_outside_the_launch_is_refused():
    with pytest.raises(UsageError, match="rank 2 of 2"):
        world({"RANK": "2", "WORLD_SIZE": "2"})


def test_shares_are_deterministic_and_balanced_by_cost():
    names = [f"p{i:02d}" for i in range(10)]
    assert plan(names, 3) == [names[0::3], names[1::3], names[2::3]]
    faces = {"p00": 12, **{n: 1 for n in names[1:]}}  # a group photo and nine portraits
    shares = plan(names, 2, cost=faces.get)
    assert shares == plan(names, 2, cost=faces.get) and shares[0] == ["p00"]
    assert sorted(shares[0] + shares[1]) == names
    assert shard(names, World(1, 2), cost=faces.get) == shares[1]
    # a process claims its own share first, then the others' from their ends
    assert visiting_order([["a", "b"], ["c", "d", "e"], ["f"]], 0) == ["a", "b", "e", "f", "d", "c"]


def test_claims_one_holder_takeover_after_death_and_a_limit(tmp_path):
    order = ["a", "b", "c"]
    first = WorkQueue(tmp_path, order)
    [a] = first.claim(1)
    second = WorkQueue(tmp_path, order)
    assert [c.name for c in second.claim(3)] == ["b", "c"]  # "a" is held
    for claim in list(second.held.values()):
        second.finish(claim, "done")
    os.close(a.fd)  # the process holding "a" dies: its claim stays, unfinished
    [again] = WorkQueue(tmp_path, order).claim(3)
    assert (again.name, again.attempt, again.given_up) == ("a", 2, False)
    os.close(again.fd)  # and dies again
    [last] = WorkQueue(tmp_path, order).claim(3)
    assert (last.attempt, last.given_up) == (3, True)  # not run a third time
    interrupted = WorkQueue(tmp_path / "other", ["z"])
    [z] = interrupted.claim(1)
    interrupted.release()  # interrupted (Ctrl-C, SIGTERM), not dead: not counted as an attempt
    assert WorkQueue(tmp_path / "other", ["z"]).claim(1)[0].attempt == 1
    gone = WorkQueue(tmp_path / "gone", order)
    shutil.rmtree(tmp_path / "gone")  # the run ended and was cleaned up meanwhile
    assert gone.claim(3) == []


def test_journals_skip_torn_lines_and_other_runs(tmp_path):
    journal = Journal(tmp_path / "rank-0.jsonl", {"fingerprint": "f"})
    journal.append({"name": "caf\udce9", "status": "done", "score": float("nan")})
    with open(tmp_path / "rank-0.jsonl", "a") as f:
        f.write('{"name": "torn", "sta')  # killed while writing
    Journal(tmp_path / "rank-1.jsonl", {"fingerprint": "other"}).append({"name": "x"})
    reader = JournalReader([tmp_path], {"fingerprint": "f"})
    assert reader.read() == [{"name": "caf\udce9", "status": "done", "score": "nan"}]
    with open(tmp_path / "rank-0.jsonl", "a") as f:
        f.write('tus": "done"}\n')
    assert reader.read() == [{"name": "torn", "status": "done"}]
    assert holder_info(rank=3)["rank"] == 3


def test_the_python_api_runs_each_share_and_the_queue_hands_out_each_input_once(tmp_path):
    prior = gs.load_prior("gaussian-faces-64")
    # deterministic: a batch of N gives the bytes of N batches of one, whatever the shares
    recipe = gs.load_recipe("restore", set={"sampler.steps": 3, "sampler.deterministic": True})
    folder = make_inputs(tmp_path / "in", n=4)
    files = [str(folder / f"face{i}.png") for i in range(4)]
    alone = {r.name: r.image for r in gs.run(recipe, prior, files, seed=5)}
    by_share = {}
    for rank in (0, 1):
        for result in run_distributed(recipe, prior, files, seed=5, world=World(rank, 2)):
            by_share[result.name] = result.image
    assert by_share.keys() == alone.keys()
    assert all(torch.equal(by_share[n], alone[n]) for n in alone)
    queue = tmp_path / "queue"
    # process 0 alone takes its share, then process 1's; process 1 arrives to find none left
    first = [
        r.name
        for r in run_distributed(recipe, prior, files, seed=5, world=World(0, 2), queue=queue)
    ]
    assert first == ["face0", "face2", "face3", "face1"]
    assert list(run_distributed(recipe, prior, files, seed=5, world=World(1, 2), queue=queue)) == []
    errors: list = []
    results = list(
        run_distributed(
            recipe, prior, [*files, str(tmp_path / "missing.png")], world=World(), errors=errors
        )
    )
    assert len(results) == 4 and [name for name, _ in errors] == ["missing"]
