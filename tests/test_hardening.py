"""Nothing lost, nothing hung, no run stopped by one bad input: each case was found by trying
guidestack as a hostile user would, and each test reproduces it (it failed before its fix)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bad_inputs import FAST, face, good, recipe, test_registry  # noqa: F401 - fixture

from guidestack.cli.main import main
from guidestack.engine.errors import InputError
from guidestack.io import outputs
from guidestack.io.images import read_image

PRIOR = ["--prior", "gaussian-faces-64"]


def run(*args: str) -> int:
    return main(["run", *FAST, *args, *PRIOR])


# --- 1. an input that is also a planned output ------------------------------------------------


def test_overwrite_never_destroys_an_input(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    source = face(out / "x.png", seed=3)
    before = source.read_bytes()
    assert run("sample", str(source), "-o", str(out), "--overwrite") == 2
    err = capsys.readouterr().err
    assert "x.png" in err and "input" in err
    assert source.read_bytes() == before


def test_a_mask_that_is_a_planned_output_is_refused_too(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    image = face(tmp_path / "a.png")
    mask = out / "a_compare.png"
    Image.new("L", (48, 40), 255).save(mask)
    before = mask.read_bytes()
    code = main(
        ["run", *FAST, "inpaint", str(image), "--mask", str(mask), "-o", str(out), "--overwrite"]
    )
    assert code == 2 and "a_compare.png" in capsys.readouterr().err
    assert mask.read_bytes() == before


# --- 2. one run per output folder ---------------------------------------------------------------


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    """Another process holds the folder: the run is refused, naming that process."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from guidestack.io.outputs import folder_lock\n"
            f"with folder_lock({str(out)!r}):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run("sample", str(good(tmp_path)), "-o", str(out)) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and socket.gethostname() in err and "in use" in err
        assert not (out / "good.png").exists() and (out / outputs.LOCK_NAME).exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_reported_and_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / outputs.LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname()})
    )
    assert run("sample", str(good(tmp_path)), "-o", str(out)) == 0
    err = capsys.readouterr().err
    assert "stale" in err and str(dead.pid) in err
    assert (out / "good.png").is_file() and not (out / outputs.LOCK_NAME).exists()


def test_concurrent_runs_into_one_folder(tmp_path):
    """Two real processes started together: one runs, the other is refused; run.json then
    describes exactly the files on disk."""
    src = good(tmp_path)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "guidestack",
        "run",
        "sample",
        str(src),
        "-o",
        str(out),
        "--steps",
        "30",
        "--quiet",
        *PRIOR,
    ]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use" in refused or "already exist" in refused
    report = json.loads((out / "run.json").read_text())
    for entry in report["inputs"]:
        assert all((out / name).is_file() for name in entry["outputs"])


# --- 3. resume verifies what it keeps -----------------------------------------------------------


def test_resume_redoes_an_input_whose_output_was_damaged(tmp_path):
    a, b = face(tmp_path / "a.png", seed=1), face(tmp_path / "b.png", seed=2)
    out = tmp_path / "out"
    assert run("sample", str(a), str(b), "-o", str(out)) == 0
    report = json.loads((out / "run.json").read_text())
    entry = next(e for e in report["inputs"] if e["name"] == "a")
    assert entry["checksums"]["a.png"]["bytes"] == (out / "a.png").stat().st_size
    good_a = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(good_a[:40])  # truncated, still there
    kept = (out / "b.png").stat().st_mtime_ns
    assert run("sample", str(a), str(b), "-o", str(out), "--resume") == 0
    assert (out / "a.png").read_bytes() == good_a
    assert (out / "b.png").stat().st_mtime_ns == kept
    report = json.loads((out / "run.json").read_text())
    assert not next(e for e in report["inputs"] if e["name"] == "a").get("resumed")
    assert next(e for e in report["inputs"] if e["name"] == "b")["resumed"]


# --- 4. an output that cannot be written --------------------------------------------------------


def test_a_name_too_long_for_the_file_system_fails_only_its_input(tmp_path, capsys):
    long = face(tmp_path / ("n" * 245 + ".png"), seed=4)
    short = good(tmp_path)
    out = tmp_path / "out"
    assert run("sample", str(long), str(short), "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert "too long" in err
    report = json.loads((out / "run.json").read_text())
    status = {e["name"][:5]: e["status"] for e in report["inputs"]}
    assert status == {"nnnnn": "refused", "good": "done"}
    assert (out / "good.png").is_file()


def test_a_failed_write_fails_only_its_input(tmp_path, monkeypatch, capsys):
    a, b = face(tmp_path / "a.png", seed=1), face(tmp_path / "b.png", seed=2)
    out = tmp_path / "out"
    real = outputs.atomic_write

    def failing(path, write):
        if Path(path).name == "a_compare.png":
            raise outputs.OutputError(f"cannot write {path}: No space left on device")
        return real(path, write)

    monkeypatch.setattr(outputs, "atomic_write", failing)
    assert run("sample", str(a), str(b), "-o", str(out)) == 1
    report = json.loads((out / "run.json").read_text())
    status = {e["name"]: e["status"] for e in report["inputs"]}
    assert status == {"a": "failed", "b": "done"}
    assert "No space left" in capsys.readouterr().err
    assert not (out / "a.png").exists()  # nothing half-written is left for --resume to trust


# --- 5. file names that are not UTF-8 -----------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_a_file_name_that_is_not_utf8_runs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    face(Path(os.fsdecode(raw)), seed=5)
    good(folder)
    out = tmp_path / "out"
    assert run("sample", str(folder), "-o", str(out)) == 0
    report = json.loads((out / "run.json").read_text(encoding="utf-8"))
    names = {e["name"] for e in report["inputs"]}
    assert names == {"good", os.fsdecode(b"caf\xe9")}
    assert os.path.isfile(os.fsencode(out) + b"/caf\xe9.png")
    assert run("sample", str(folder), "-o", str(out), "--resume") == 0


# --- 6. inputs that are not regular files -------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_without_writer_is_refused_not_waited_for(tmp_path, monkeypatch):
    from guidestack.io import images

    monkeypatch.setattr(images, "PIPE_TIMEOUT", 1)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            read_image(fifo)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO without a writer hung")
    assert isinstance(outcome[0], InputError) and "pipe.png" in str(outcome[0])
    assert "nothing" in str(outcome[0])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_png_streamed_through_a_fifo_is_read(tmp_path):
    data = good(tmp_path).read_bytes()
    fifo = tmp_path / "stream.png"
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.2)  # the writer is waiting for a reader, as `<(cat face.png)` does
    image = read_image(fifo)
    thread.join(timeout=5)
    assert image.size == (48, 40)
    assert np.array_equal(image.tensor.numpy(), read_image(tmp_path / "good.png").tensor.numpy())


def test_a_device_file_is_refused(tmp_path):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(InputError, match="not a regular file"):
        read_image("/dev/zero")


# --- 7. a closed stdout -------------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly(tmp_path):
    script = (
        "import sys; from guidestack.cli.main import main; sys.exit(main(['plugins', '--json']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if sys.platform == "linux":  # a small pipe, so the listing cannot fit in it before we close
        import fcntl

        fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert "BrokenPipe" not in err and "Traceback" not in err and "error" not in err, err
    assert code in (0, 141)


# --- 9. options checked before any input runs ---------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--faces", "--upscale", "0"], "upscale"),
        (["--faces", "--upscale", "-2"], "upscale"),
        (["--faces", "--upscale", "1000"], "upscale"),
        (["--faces", "--face-threshold", "5"], "threshold"),
        (["--faces", "--min-face", "-1"], "min_face"),
    ],
)
def test_faces_options_are_usage_errors_before_anything_runs(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert run("restore", str(good(tmp_path)), "-o", str(out), *flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("assignment", "path"),
    [("sampler.start=5000", "sampler.start"), ("stage.difface.start=99999", "stage[0].start")],
)
def test_timesteps_beyond_the_prior_are_recipe_errors(tmp_path, capsys, assignment, path):
    name = "difface" if "difface" in assignment else "restore"
    out = tmp_path / "out"
    code = run(name, str(good(tmp_path)), "-o", str(out), "--set", assignment)
    assert code == 2
    err = capsys.readouterr().err
    assert path in err and "999" in err
    assert not out.exists()
    assert main(["validate", name, "--set", assignment, *PRIOR]) == 2
    assert path in capsys.readouterr().err


# --- 10. output folder and device ---------------------------------------------------------------


def test_an_empty_output_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("sample", str(good(tmp_path)), "-o", "") == 2
    assert "-o" in capsys.readouterr().err
    assert not (tmp_path / "good_compare.png").exists() and not (tmp_path / "run.json").exists()


@pytest.mark.parametrize("device", ["meta", "cpux"])
def test_a_device_that_cannot_run_is_refused(tmp_path, capsys, device):
    assert run("sample", str(good(tmp_path)), "-o", str(tmp_path / "o"), "--device", device) == 2
    err = capsys.readouterr().err
    assert device in err and "unexpected" not in err


# --- 11. recipe files ---------------------------------------------------------------------------


def test_a_recipe_saved_with_a_bom_is_read(tmp_path, capsys):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'description = "with a BOM"\nextends = "sample"\n')
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_a_deep_extends_chain_is_a_recipe_error(tmp_path, capsys):
    depth = 1500
    for i in range(depth):
        parent = f'extends = "r{i + 1}.toml"\n' if i + 1 < depth else ""
        (tmp_path / f"r{i}.toml").write_text(f'description = "level {i}"\n{parent}')
    assert main(["validate", str(tmp_path / "r0.toml")]) == 2
    err = capsys.readouterr().err
    assert "extends" in err and "deep" in err and "Recursion" not in err


# --- 12. corrupt JPEG scan data -----------------------------------------------------------------


def _corrupt_jpeg(path: Path) -> Path:
    yy, xx = np.mgrid[0:256, 0:256]
    picture = Image.fromarray(np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # scan cut short, then an end marker
    return path


def test_corrupt_jpeg_scan_data_is_refused(tmp_path):
    path = _corrupt_jpeg(tmp_path / "broken.jpg")
    Image.open(path).load()  # PIL alone accepts it (libjpeg resynchronises)
    with pytest.raises(InputError, match="broken.jpg.*corrupt"):
        read_image(path)


# --- 13. the web UI checks the declared size before decoding ------------------------------------


def test_ui_refuses_a_huge_upload_before_decoding(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from guidestack.engine.errors import UsageError
    from guidestack.plugins.ui import session

    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 150 KB on disk

    def no_decode(self, *args, **kwargs):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    with pytest.raises(UsageError, match="400,000,000 pixels"):
        session.check_upload(path, "image")
