"""Faults of the machine and the network (issue 19): an unwritable or full disk, an unreachable
cluster, resources the cluster cannot give, SIGTERM and Ctrl-C. Each stops with exit status ≠ 0
and one line on stderr naming the path, address or key and the cause, within its bound, and
writes nothing outside the results folder.

A full disk is a small tmpfs filled up to a few pages, a read-only file system a tmpfs mounted
read-only: both need root (``mount``); without it those tests are skipped. A read-only folder is
one of mode 555, and root meets it without its capability to write anywhere (``setpriv``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fedsweep.cli import run_main, tune_main

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096
TQDM = re.compile(r"\|\s*\d+/\d+ \[")  # a progress bar's redraw, not a line of fedsweep's


def error_lines(stderr: str) -> list[str]:
    """What stderr says besides progress bars (which redraw with carriage returns); Ray's and
    Tune's own start-up and state lines are quiet (``init_ray``), so they count too."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not TQDM.search(line)]


@contextmanager
def tmpfs(path: Path, *, size: int, readonly: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at ``path`` (root only: skipped otherwise), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path, *, leave_pages: int) -> None:
    """Fill ``folder``'s file system but ``leave_pages`` pages."""
    info = os.statvfs(folder)
    free = info.f_bavail * info.f_frsize
    (folder / "filler").write_bytes(b"\0" * (free - leave_pages * PAGE))


def run_cli(args: list[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None):
    """``python -m fedsweep.<args>`` in a subprocess; (exit status, stdout, stderr, seconds)."""
    start = time.time()
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=cwd)  # fmt: skip
    return done.returncode, done.stdout, done.stderr, time.time() - start


# -- 1. an unwritable or full disk -----------------------------------------------------------


@pytest.fixture(params=["a file", "a read-only file system"])
def unwritable(request, tmp_path) -> Iterator[tuple[Path, str]]:
    """A results folder that cannot take a file, and what the error says about it."""
    if request.param == "a file":
        (tmp_path / "taken").write_text("a file where the results folder should be\n")
        yield tmp_path / "taken" / "results", "is a file, not a folder"
    else:
        with tmpfs(tmp_path / "ro", size=64 * PAGE, readonly=True) as mount:
            yield mount / "results", "read-only"


def no_ray_start(monkeypatch) -> bool:
    """Make any ``ray.init`` fail the test; returns whether Ray was already up (a session's)."""
    import ray

    def started(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", started)
    return ray.is_initialized()


def test_unwritable_run_folder_stops_before_ray(unwritable, tmp_path, capsys, monkeypatch):
    results, cause = unwritable
    was_up = no_ray_start(monkeypatch)
    before = sorted(tmp_path.rglob("*"))
    assert run_main(["runtime=ray", "rounds=1", f"log_dir={results / 'run'}"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write the run's results to {results / 'run'}") and cause in line, line
    assert sorted(tmp_path.rglob("*")) == before  # no probe left, no folder made
    import ray

    assert ray.is_initialized() == was_up


def test_unwritable_sweep_folder_stops_before_ray(unwritable, tmp_path, capsys, monkeypatch):
    results, cause = unwritable
    was_up = no_ray_start(monkeypatch)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\noverrides: [runtime=ray, rounds=1]\ngrid:\n  method.theta: [0.5]\n")
    before = sorted(tmp_path.rglob("*"))
    assert tune_main([str(sweep), "--results", str(results)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write the sweep's results to {results}") and cause in line, line
    assert sorted(tmp_path.rglob("*")) == before
    import ray

    assert ray.is_initialized() == was_up


def without_root_override() -> list[str]:
    """A command prefix under which folder permissions hold: none for a user, and for root
    ``setpriv`` without the capabilities that let root write into any folder."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root writes into read-only folders, and setpriv (util-linux) is missing to drop that")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "tune"])
def test_read_only_folder_stops_in_one_line(command, tmp_path):
    """A results folder inside a folder the user may not write (mode 555): one line naming it,
    exit status 2, before Ray starts (well within the time Ray takes), nothing written."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    results = locked / "results"
    if command == "run":
        args, what = ["fedsweep.run", "runtime=ray", "rounds=1", f"log_dir={results}"], "the run's results"
    else:
        sweep = tmp_path / "s.yaml"
        sweep.write_text("name: s\noverrides: [runtime=ray, rounds=1]\ngrid:\n  method.theta: [0.5]\n")
        args, what = ["fedsweep.tune", str(sweep), "--results", str(results)], "the sweep's results"
    try:
        done = subprocess.run([*without_root_override(), sys.executable, "-m", *args], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    finally:
        locked.chmod(0o755)
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0] == f"error: cannot write {what} to {results}: read-only (permission denied)"
    assert list(locked.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("leave_pages, checkpoints", [(4, False), (30, True)], ids=["tensorboard", "checkpoint"])
def test_full_disk_mid_run_one_line_and_checkpoints_intact(tmp_path, leave_pages, checkpoints):
    """A disk that fills while a run writes its TensorBoard events or a checkpoint: one line
    naming the path and the cause; the checkpoints written before load and continue the run."""
    from fedsweep.experiment.checkpoint import load_checkpoint, saved_rounds

    with tmpfs(tmp_path / "disk", size=256 * PAGE) as disk:
        fill(disk, leave_pages=leave_pages)
        log_dir = disk / "run"
        args = ["rounds=8", f"log_dir={log_dir}", *(["checkpoint.every=1", "checkpoint.keep=3"] if checkpoints else [])]
        status, _, err, _ = run_cli(["fedsweep.run", *args], timeout=300)
        lines = error_lines(err)
        assert status == 1 and len(lines) == 1, err[-3000:]
        assert re.match(rf"error: cannot write {re.escape(str(log_dir))}\S*: no space left on device", lines[0]), lines
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "run"]
        if checkpoints:
            saved = saved_rounds(log_dir)
            assert saved and not list(log_dir.rglob("*.tmp"))
            for rnd in saved:  # every checkpoint left is whole
                assert load_checkpoint(log_dir / "checkpoints" / f"round_{rnd:06d}" / "checkpoint.pt")["round"] == rnd
            assert f"checkpoint of round {saved[-1]} kept, continue with: " in lines[0]
            assert f"checkpoint.resume={log_dir}/checkpoints/round_{saved[-1]:06d}/checkpoint.pt" in lines[0]


@pytest.mark.slow
def test_sweep_on_full_disk_stops_in_one_line_and_resumes_to_undisturbed_numbers(tmp_path):
    """A sweep whose results disk fills midway stops with one line (its state kept whole, Ray's
    tracebacks kept off the terminal); rerun once space is freed, it resumes and every trial
    ends with the numbers of an undisturbed run (before: ``KeyError: 'runtime'`` from a state
    file cut short)."""
    import pandas as pd

    from tests.helpers import history

    sweep = tmp_path / "full.yaml"
    thetas = [0.5, 0.3]
    sweep.write_text(f"name: full\noverrides: [runtime=local, rounds=3, checkpoint.every=1]\n"
                     f"grid:\n  method.theta: {thetas}\n")  # fmt: skip
    with tmpfs(tmp_path / "disk", size=512 * PAGE) as disk:
        fill(disk, leave_pages=76)  # about 40% of what the sweep writes (194 pages measured)
        command = ["fedsweep.tune", str(sweep), "--results", str(disk), "--no-dashboard"]
        status, _, err, _ = run_cli(command, timeout=300, cwd=tmp_path)
        assert "Traceback" not in err, err[-3000:]
        lines = error_lines(err)
        assert len(lines) == 1, err[-3000:]
        line = lines[0]
        assert status == 1, err[-3000:]
        assert re.match(rf"error: cannot write {re.escape(str(disk))}\S*: no space left on device; ", line), line
        assert line.endswith(f"resume with: {sys.executable} -m fedsweep.tune {sweep} --results {disk} --no-dashboard"), line
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "full"]

        (disk / "filler").unlink()  # space freed: the same command resumes
        status, out, err, _ = run_cli(command, timeout=300, cwd=tmp_path)
        assert status == 0, (out + err)[-3000:]
        table = pd.read_csv(disk / "full" / "results.csv").set_index("method.theta")
    assert table["status"].tolist() == ["done"] * 2
    for theta in thetas:
        final = history(["rounds=3", f"method.theta={theta}"], tmp_path / f"straight_{theta}")[-1]
        assert table.loc[theta, "accuracy/test"] == pytest.approx(final["accuracy/test"], abs=1e-12)
        assert table.loc[theta, "loss/test"] == pytest.approx(final["loss/test"], rel=1e-9)


# -- 2. unreachable clusters -----------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound and closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["runtime.address", "--address", "RAY_ADDRESS", "ray://", "unparsable", "unknown host"])
def test_unreachable_cluster_fails_fast_naming_the_address(how, tmp_path):
    port = _closed_port()
    address = {"ray://": f"ray://127.0.0.1:{port}", "unparsable": "not_a_host:xyz",
               "unknown host": "no-such-host.invalid:6379"}.get(how, f"127.0.0.1:{port}")  # fmt: skip
    env = {"RAY_ADDRESS": address} if how == "RAY_ADDRESS" else {}
    if how == "--address":
        sweep = tmp_path / "s.yaml"
        sweep.write_text("name: s\noverrides: [runtime=ray, rounds=1]\ngrid:\n  method.theta: [0.5]\n")
        args = ["fedsweep.tune", str(sweep), "--results", str(tmp_path / "results"), "--address", address]
    else:
        args = ["fedsweep.run", "runtime=ray", "rounds=1", f"log_dir={tmp_path / 'run'}",
                *([f"runtime.address={address}"] if how != "RAY_ADDRESS" else [])]  # fmt: skip
    status, _, err, seconds = run_cli(args, timeout=60, env=env, cwd=tmp_path)
    lines = error_lines(err)
    assert status == (2 if how == "unparsable" else 1) and len(lines) == 1, err[-3000:]
    assert address in lines[0] and ("not a Ray address" if how == "unparsable" else "cannot reach") in lines[0], lines
    assert seconds < 15, seconds


@pytest.mark.parametrize("server", ["http", "silent"])
def test_an_address_where_something_else_listens_fails_fast(server):
    """A port that accepts connections but is not Ray's GCS (a web server, the dashboard's port,
    a listener that never answers): one line within the probe's bound, not Ray's minutes of
    reconnecting (before: ~25 s for a web server)."""
    import socket
    import threading

    from fedsweep.core.errors import RunError
    from fedsweep.federation.runtime.ray_start import PROBE_SECONDS, probe_address

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    def answer_as_a_web_server() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(1024)
            connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    if server == "http":
        threading.Thread(target=answer_as_a_web_server, daemon=True).start()
    start = time.time()
    expected = "answers, but not as Ray's GCS" if server == "http" else f"no answer from {address} within"
    with pytest.raises(RunError, match=re.escape(expected)):
        probe_address(address, f"--address={address}")
    assert time.time() - start < 2 * PROBE_SECONDS + 1
    listener.close()


# -- 3. resources the cluster cannot give ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("ask, key, numbers", [
    (["runtime.workers=8"], "runtime.workers=8", f"asks for 8 CPUs, this machine has {len(os.sched_getaffinity(0))}"),
    (["runtime.workers=1", "runtime.num_gpus=1"], "runtime.num_gpus=1", "asks for 1 GPUs, this machine has 0"),
    (["sweep", "runtime.workers=4"], "runtime.workers=4", f"asks for 4 CPUs, this machine has {len(os.sched_getaffinity(0))}"),
    (["sweep", f"runtime.workers={len(os.sched_getaffinity(0))}", "runtime.driver_serves=true"],
     "and the trial's own share (runtime.driver_serves)",
     f"asks for {len(os.sched_getaffinity(0)) + 1} CPUs, the Ray cluster has {len(os.sched_getaffinity(0))}"),
], ids=["workers", "gpu", "sweep trials", "trials serving a share"])  # fmt: skip
def test_infeasible_resources_fail_fast(ask, key, numbers, tmp_path):
    import torch

    if len(os.sched_getaffinity(0)) >= 8 or ("runtime.num_gpus=1" in ask and torch.cuda.is_available()):
        pytest.skip("this machine can give what the test asks")
    if ask[0] == "sweep":
        sweep = tmp_path / "s.yaml"
        sweep.write_text(f"name: s\noverrides: [runtime=ray, rounds=1, {', '.join(ask[1:])}]\ngrid:\n  method.theta: [0.5, 0.3]\n")
        args = ["fedsweep.tune", str(sweep), "--results", str(tmp_path / "results"), "--no-dashboard"]
    else:
        args = ["fedsweep.run", "runtime=ray", "rounds=1", f"log_dir={tmp_path / 'run'}", *ask]
    status, _, err, seconds = run_cli(args, timeout=60, cwd=tmp_path)
    lines = error_lines(err)
    assert status != 0 and len(lines) == 1, err[-3000:]
    assert key in lines[0] and numbers in lines[0], lines
    assert seconds < 15, seconds


@pytest.mark.slow
def test_workers_ray_cannot_place_time_out_in_one_line(ray_session):
    """A pool whose workers stay pending (a cluster that shrank under it) stops in one line."""
    from fedsweep.core.errors import RunError
    from fedsweep.federation.runtime.ray_runtime import RayRuntime, WorkerResources

    pool = RayRuntime(workers=1, resources=WorkerResources(num_cpus=64), label="pending")
    start = time.time()
    try:
        with pytest.raises(RunError, match=r"^1 of 1 workers of pending not started within 3 s \(each asks "
                                            r"runtime.num_cpus=64, runtime.num_gpus=0; the Ray cluster has .* CPUs"):
            pool.wait_ready(timeout=3)
    finally:
        pool.close()
    assert time.time() - start < 15


# -- 4. SIGTERM and Ctrl-C -------------------------------------------------------------------


INTERRUPTED_IN_A_STRING = """
import sys
from fedsweep.cli import interrupt_handled
try:
    exec("raise KeyboardInterrupt")  # as SIGTERM during torch's import: inside dataclasses' exec of a str
except KeyboardInterrupt:
    if sys.argv[1] == "handled":
        interrupt_handled()
sys.exit(130)
"""


def test_a_caught_interrupt_exits_with_the_code_returned(tmp_path):
    """A Ctrl-C caught after it left code run from a string still ends a ``python -m`` program by
    SIGINT (-2) unless ``interrupt_handled`` says it was handled; the commands call it, and
    then exit with 130 as they say."""
    (tmp_path / "interrupted.py").write_text(INTERRUPTED_IN_A_STRING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    codes = {mode: subprocess.run([sys.executable, "-m", "interrupted", mode], cwd=tmp_path, env=env, timeout=120).returncode
             for mode in ("caught", "handled")}  # fmt: skip
    assert codes == {"caught": -signal.SIGINT, "handled": 130}


EXITING = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from fedsweep.cli import exit_now
pool = ThreadPoolExecutor(2)  # left open, idle: Python's exit tells its threads to end
pool.submit(time.sleep, 0.01).result()
done = []
writer = threading.Thread(target=lambda: (time.sleep(0.5), done.append(1)))  # a non-daemon thread still working
writer.start()
atexit.register(lambda: print("atexit ran after the writer:", done == [1]))
print("output before the exit", end="")  # unflushed
exit_now(int(sys.argv[1]))
"""


def test_commands_exit_with_their_code_once_threads_and_atexit_are_done(tmp_path):
    """``exit_now`` (how the commands end, skipping Python's teardown of every module) does what a
    program's exit does first: an idle thread pool left open does not hang it, a working thread is
    joined, atexit handlers run after it, and the output is flushed."""
    (tmp_path / "exiting.py").write_text(EXITING)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(tmp_path / "exiting.py"), "7"], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    assert done.returncode == 7, done.stderr[-2000:]
    assert done.stdout == "output before the exitatexit ran after the writer: True\n"


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-run", "before Ray"])
def test_sigterm_keeps_checkpoints_says_how_to_continue_and_leaves_no_ray(when, tmp_path):
    from tests.ray_processes import processes_left_under

    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))  # short (Ray's socket paths); in its processes' command lines
    log_dir = tmp_path / "run"
    args = [sys.executable, "-m", "fedsweep.run", "runtime=ray", "runtime.workers=1", "rounds=50", "checkpoint.every=1",
            f"log_dir={log_dir}"]  # fmt: skip
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp)})  # fmt: skip
    try:
        deadline = time.time() + 240
        if when == "mid-run":
            while not list(log_dir.glob("checkpoints/round_*/checkpoint.pt")) and time.time() < deadline:
                assert run.poll() is None, run.communicate()
                time.sleep(0.2)
        else:
            time.sleep(1.0)  # still importing and composing the config
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    lines = error_lines(err)
    assert run.returncode == 130 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: stopped (Ctrl-C or SIGTERM); "), lines
    if when == "mid-run":
        assert re.search(r"checkpoint of round \d+ kept, continue with: .* checkpoint\.resume=\S+checkpoint\.pt$", lines[0])
    else:
        assert "start again with: " in lines[0] and "rounds=50" in lines[0], lines
    assert not processes_left_under(ray_tmp), "the run's Ray processes outlived it"
