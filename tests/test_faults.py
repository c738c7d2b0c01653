"""Dying workers: Ray restarts them and retries the request, with the numbers of an undisturbed
run; a worker that keeps dying fails the run with one line naming it, its node and the cause."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import ray

from fedsweep.cli import run_main
from fedsweep.experiment.config import compose
from fedsweep.core.errors import RunError
from fedsweep.experiment.loop import run_experiment

pytestmark = pytest.mark.slow  # Ray, subprocesses or long runs: not in the fast tier

# long requests (one client at a time, many epochs), so that a kill lands in the middle of one
LONG = [
    "method=fedavg", "method.local_epochs=40", "rounds=3", "seed=4",
    "partition.clients_f=20", "partition.clients_g=20", "runtime=ray", "runtime.workers=2",
    "runtime.num_cpus=0.5", "runtime.vectorize=false",
]  # fmt: skip


def run_and_kill(overrides, log_dir, kills: int):
    """Run in a thread; from round 1 on, SIGKILL worker 1's process ``kills`` times while
    requests are in flight. Returns (history, the run's exception or None, pids killed)."""
    history, error, round_done, first_pid = [], [], threading.Event(), []

    def worker_pid() -> int:
        (name,) = [n for n in ray.util.list_named_actors() if f" {log_dir.name} worker 1/" in n]
        return ray.get(ray.get_actor(name).where.remote(), timeout=60)["pid"]  # waits out a restart

    def report(metrics):
        try:
            if not history:  # the run waits here, no request in flight: the answer comes at once
                first_pid.append(worker_pid())
            history.append(metrics)
        finally:
            round_done.set()

    def target():
        try:
            run_experiment(compose(overrides), log_dir=log_dir, report=report, progress=False)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            error.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    assert round_done.wait(timeout=180)
    killed = []
    for k in range(kills):
        pid = first_pid[0] if k == 0 else worker_pid()
        time.sleep(0.3)  # in the middle of the next request (each takes about a second)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    thread.join(timeout=300)
    return history, (error[0] if error else None), killed


def test_a_killed_worker_is_restarted_and_the_run_has_the_undisturbed_numbers(ray_session, tmp_path):
    """SCAFFOLD: each client's own reply and per-client state, the strictest of the reply shapes
    (a weighted sum per worker, FedAvg's, goes through the same retried request)."""
    overrides = ["method=scaffold" if o == "method=fedavg" else "rounds=2" if o == "rounds=3" else o for o in LONG]  # the kill lands in round 2
    undisturbed = []
    run_experiment(compose(overrides), log_dir=tmp_path / "calm", report=undisturbed.append, progress=False)
    history, error, killed = run_and_kill(overrides, tmp_path / "killed", kills=1)
    assert error is None, error
    assert len(killed) == 1
    assert str(history) == str(undisturbed)  # bit-identical: the retried request gives the same answer


def test_a_worker_that_keeps_dying_fails_the_run_in_one_line(ray_session, tmp_path):
    _, error, killed = run_and_kill(LONG + ["runtime.max_restarts=1"], tmp_path / "doomed", kills=2)
    assert isinstance(error, RunError), error
    message = str(error)
    assert "\n" not in message
    assert "worker 1/2 of doomed" in message and "runtime.max_restarts=1" in message
    assert f"on node {ray.util.get_node_ip_address()}, pid {killed[-1]}" in message
    assert "died" in message and "Worker exit detail" not in message


def test_the_cli_prints_a_run_error_in_one_line(tmp_path, capsys, monkeypatch):
    import fedsweep.experiment.loop

    def dying(*args, **kwargs):
        raise RunError("worker 1/2 of x (on node 10.0.0.1, pid 1) died 4 time(s)")

    monkeypatch.setattr(fedsweep.experiment.loop, "run_experiment", dying)
    assert run_main(["rounds=1", f"log_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: worker 1/2 of x (on node 10.0.0.1, pid 1) died 4 time(s)"
