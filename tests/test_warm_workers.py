"""Warm workers (``fedsweep.federation.runtime.warm``): a pool leases them instead of starting new
actors, reserves their CPUs while it runs, releases them at its end, and its numbers are those of
new workers; a worker that imported a file changed since, or a module of another run's folder,
is stopped instead of leased; one held by a run that ended without releasing it is taken over."""

from __future__ import annotations

import os
import sys
import time

import pytest

from fedsweep.federation.runtime import warm
from fedsweep.federation.runtime.worker import changed_since, imported_from
from tests.test_runtimes import METHODS, SHORT, history


def test_changed_files_and_modules_of_a_folder_are_found(tmp_path, monkeypatch):
    (tmp_path / "warm_probe_a.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    since = time.time_ns()
    import warm_probe_a  # noqa: F401

    assert changed_since(since) is None
    assert imported_from([str(tmp_path)]) == "warm_probe_a"
    assert imported_from([str(tmp_path / "elsewhere")]) is None
    later = (since + 10**9) / 1e9
    os.utime(tmp_path / "warm_probe_a.py", (later, later))
    assert changed_since(since) == str(tmp_path / "warm_probe_a.py")
    del sys.modules["warm_probe_a"]


@pytest.fixture
def warm_workers(ray_session):
    """Two warm workers in the tests' Ray, stopped at the end (other tests' pools must not find them)."""
    handles = warm.spawn(2)
    try:
        ray_session.get([h.where.remote() for h in handles], timeout=120)
        yield handles
    finally:
        warm.stop_all()


def _pid(ray, worker) -> int:
    return ray.get(worker.where.remote())["pid"]


def _stopped(ray, worker) -> bool:
    """The actor is dead once ``ray.kill``, which returns before the kill lands, has taken effect
    (a call sent right after it may still be answered)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(worker.where.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.1)
    return False


def _free_cpus(ray, expected: float) -> float:
    """Ray's free CPUs, once they read ``expected`` (its view is updated within a second or so)."""
    deadline = time.monotonic() + 10
    while (free := ray.available_resources().get("CPU", 0)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return free


@pytest.mark.slow
def test_a_pool_leases_warm_workers_and_gives_the_numbers_of_new_ones(warm_workers, ray_session, tmp_path):
    from fedsweep.federation.runtime.ray_runtime import ray_pool

    ray = ray_session
    pids = {_pid(ray, h) for h in warm_workers}
    run = SHORT + METHODS["vrcs-minibatch-sampled"] + ["runtime=ray"]
    free = _free_cpus(ray, 2.0)
    with ray_pool(workers=2, num_cpus=0.5, num_gpus=0, device="cpu", label="warm") as pool:
        assert len(pool.warm) == 2 and {_pid(ray, w) for w in pool.workers} == pids
        pool.wait_ready()
        assert _free_cpus(ray, free - 1.0) == free - 1.0  # their CPUs are reserved for the run
        with ray_pool(workers=1, num_cpus=0.5, num_gpus=0, device="cpu", label="beside") as beside:
            assert beside.warm == []  # both are leased: another pool starts its own worker
        on_warm = history(run, tmp_path / "warm", runtime=pool)
    assert _free_cpus(ray, free) == free
    with ray_pool(workers=2, num_cpus=0.5, num_gpus=0, device="cpu", label="new", max_restarts=2) as pool:
        assert pool.warm == []  # warm workers restart as max_restarts=3 says: new actors here
        on_new = history(run, tmp_path / "new", runtime=pool)
    assert str(on_warm) == str(on_new)  # nan included
    with ray_pool(workers=2, num_cpus=0.5, num_gpus=0, device="cpu", label="again") as pool:
        assert {_pid(ray, w) for w in pool.workers} == pids  # released: the same processes serve the next run


@pytest.mark.slow
def test_stale_warm_workers_are_stopped_and_ended_runs_taken_over(warm_workers, ray_session, tmp_path, monkeypatch):
    ray = ray_session
    first, second = warm_workers
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    run_a.mkdir(), run_b.mkdir()
    (run_a / "warm_plugin_a.py").write_text("class Token:\n    pass\n")
    monkeypatch.syspath_prepend(str(run_a))
    import warm_plugin_a

    # a run in folder a leases both and sends one of them an object of its plug-in
    monkeypatch.chdir(run_a)
    leased, stopped = warm.lease(2, label="a", threads=1)
    assert len(leased) == 2 and stopped == 0
    handles = {_pid(ray, h): h for h in leased}
    with_plugin = handles[_pid(ray, first)]
    ray.get(with_plugin.release.remote(warm_plugin_a.Token()))  # not its owner: only imports the plug-in
    warm.release(leased)

    # held by a run whose job ended (killed before releasing): taken over
    ray.get(second.lease.remote("ffffffff", "ended", 0, 1, [str(run_b)]))
    # a run in folder b: the worker that imported a's plug-in may not serve it (b may shadow it)
    monkeypatch.chdir(run_b)
    leased, stopped = warm.lease(2, label="b", threads=1)
    assert stopped == 1 and [_pid(ray, h) for h in leased] == [_pid(ray, second)]
    assert _stopped(ray, first)
    warm.release(leased)

    # a file it imported (a plug-in of folder b) changed since: stopped too
    (run_b / "warm_plugin_b.py").write_text("class Token:\n    pass\n")
    monkeypatch.syspath_prepend(str(run_b))
    import warm_plugin_b

    ray.get(second.release.remote(warm_plugin_b.Token()))
    later = time.time() + 10
    os.utime(run_b / "warm_plugin_b.py", (later, later))
    leased, stopped = warm.lease(1, label="b", threads=1)
    assert leased == [] and stopped == 1
    assert _stopped(ray, second)


class Busy:
    """An argument whose unpickling keeps the worker that receives it busy for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self):
        return (time.sleep, (self.seconds,))


@pytest.mark.slow
def test_a_busy_warm_worker_is_not_waited_for(warm_workers, ray_session):
    """A warm worker busy with another run's long request (or still starting) does not hold a
    new run's start: after ``LEASE_SECONDS`` the run goes on without it, and when the worker
    gets to the call it declines, staying free for the next run."""
    ray = ray_session
    busy, free = warm_workers
    ray.get(free.where.remote())
    pending = busy.release.remote(Busy(warm.LEASE_SECONDS + 3))  # busy unpickling for longer than a run waits
    began = time.monotonic()
    leased, stopped = warm.lease(2, label="hurried", threads=1)
    waited = time.monotonic() - began
    assert [_pid(ray, h) for h in leased] == [_pid(ray, free)] and stopped == 0
    assert warm.LEASE_SECONDS <= waited < warm.LEASE_SECONDS + 2
    ray.get(pending)
    warm.release(leased)
    leased, _ = warm.lease(2, label="next", threads=1)
    assert sorted(_pid(ray, h) for h in leased) == sorted(_pid(ray, h) for h in (busy, free))  # it declined: still free
    warm.release(leased)
