"""Warm workers: pool processes that a kept local Ray (``fedsweep ray start``) holds ready, with
torch imported, for the ``runtime=ray`` runs that join it.

A new worker process takes 1.1-2.0 s to start and import torch (this 2-core machine), which a
run on a small workload waits for before its first round. A warm worker is a detached named
actor in the namespace :data:`NAMESPACE`, started by ``fedsweep ray start``, asking no resources
of the scheduler while it waits (``num_cpus=0``). A run that joins a Ray holding warm workers
(``RayRuntime``):

* leases as many as its pool has workers (``Worker.lease``: one run at a time; one leased by a
  run whose Ray job has ended is taken over; one that does not answer within
  :data:`LEASE_SECONDS`, busy with another run's request or still starting, is left out);
* reserves their CPUs with a placement group for its duration, so Ray counts them busy as it
  counts a pool's own actors, and another run or trial waits for them as it would;
* releases them at its end: they drop its data and wait for the next run.

A warm worker never runs other code than a new one would: one that has imported a source file
changed since it started, or a module from another run's folder (its plug-ins, which this run's
folder may shadow with its own), is stopped and replaced instead of leased (``stale``); checking
costs ~10 ms. Warm workers serve CPU pools (no ``runtime.num_gpus``: Ray shows a GPU only to
an actor created with a share of it) with Ray's restarts as a pool's default
(``runtime.max_restarts`` = :data:`RESTARTS`: an actor's restarts are fixed when it is created),
outside Tune trials (a trial's workers belong to its placement group). Any other pool's workers
are new actors, as without warm workers.
"""

from __future__ import annotations

import os
import time
import uuid

import ray

from fedsweep.federation.runtime.worker import READY_SECONDS, Worker

NAMESPACE = "fedsweep-warm"
RESTARTS = 3
"""The warm workers' ``max_restarts`` (and their calls' retries): ``runtime.max_restarts``'s default."""
RELEASE_SECONDS = 5.0
"""How long a run's end waits for its warm workers to be released."""
ANSWER_SECONDS = 0.5
"""How long after the deadline a worker's answer (given before it) may take to arrive."""
LEASE_SECONDS = 3.0
"""How long a run waits for a warm worker to answer: one busy with another run's request (a round
may take minutes) or still starting answers later, and then declines (its lease came too late)."""


def usable(*, num_gpus: float, max_restarts: int) -> bool:
    """Whether a pool with these settings, in this process, may use warm workers."""
    return num_gpus == 0 and max_restarts == RESTARTS and ray.util.get_current_placement_group() is None


def names() -> list[str]:
    """The warm workers of the Ray this process joined (alive, leased or not), oldest first."""
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE)


def spawn(count: int) -> list[ray.actor.ActorHandle]:
    """Start ``count`` warm workers (detached: they outlive this process)."""
    actor = ray.remote(Worker)
    return [
        actor.options(
            name=f"warm {_stamp()} {uuid.uuid4().hex[:6]}", namespace=NAMESPACE, lifetime="detached",
            num_cpus=0, max_restarts=RESTARTS, max_task_retries=RESTARTS,
        ).remote("warm", i, 1, warm=True)
        for i in range(count)
    ]  # fmt: skip


def lease(count: int, *, label: str, threads: int) -> tuple[list[ray.actor.ActorHandle], int]:
    """Up to ``count`` warm workers, leased by this run (fewer when fewer are free), and how many
    stale ones were stopped on the way (the run starts as many new ones at its end: now they would
    take the cores from its own workers' start)."""
    job = ray.get_runtime_context().get_job_id()
    code_path = [os.path.abspath(os.curdir)]  # what Ray gives a job's own workers (``py_driver_sys_path``)
    leased: list[ray.actor.ActorHandle] = []
    stopped = 0
    candidates = [(name, None) for name in names()]  # (name, the ended job it may take over from)
    deadline = time.time() + LEASE_SECONDS
    while candidates and len(leased) < count and time.time() < deadline:
        batch, candidates = candidates[: count - len(leased)], candidates[count - len(leased) :]
        calls = []
        for name, replacing in batch:
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:  # gone since it was listed
                continue
            index = len(leased) + len(calls)
            calls.append((name, handle, handle.lease.remote(job, label, index, threads, code_path, replacing, deadline)))
        if not calls:
            continue
        # a worker leases only before the deadline; its answer gets a moment more to arrive
        wait = max(0.0, deadline + ANSWER_SECONDS - time.time())
        answered, _ = ray.wait([call for *_, call in calls], num_returns=len(calls), timeout=wait)
        for name, handle, call in calls:
            if call not in answered:  # busy or starting: it declines when it gets to the call
                continue
            try:
                status, detail = ray.get(call)
            except ray.exceptions.RayActorError:  # stopped meanwhile
                continue
            if status == "leased":
                leased.append(handle)
            elif status == "late":
                continue
            elif status == "stale":
                ray.kill(handle, no_restart=True)
                stopped += 1
            elif not _alive(detail):  # taken by a run that ended without releasing it (killed)
                candidates.append((name, detail))
    return leased, stopped


def release(handles: list[ray.actor.ActorHandle]) -> None:
    """This run's warm workers free for the next run (they drop its data first)."""
    job = ray.get_runtime_context().get_job_id()
    calls = [handle.release.remote(job) for handle in handles]
    try:
        ray.get(calls, timeout=RELEASE_SECONDS)
    except ray.exceptions.RayActorError:  # one died at the end: Ray restarts it, unleased
        pass
    except ray.exceptions.GetTimeoutError:  # still computing a request of a run stopped mid-round:
        pass  # it stays leased to this run's job, and the next run takes it over once that job has ended


def stop_all() -> int:
    """Stop every warm worker of this Ray (not replaced); how many there were."""
    stopped = 0
    for name in names():
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            stopped += 1
        except ValueError:
            pass
    return stopped


def _alive(job: str) -> bool:
    """Whether Ray's job ``job`` (hex id) is still running."""
    from ray._private import state  # ray is pinned (pyproject.toml); tested by test_warm_workers

    return any(entry["JobID"] == job and not entry["IsDead"] for entry in state.jobs())


def _stamp() -> str:
    return f"{time.time():.6f}"  # names sort oldest first: a run leases those that had longest to boot


def _main(count: int) -> None:
    """Join the kept Ray (``fedsweep ray start``), start ``count`` warm workers, wait until ready."""
    from fedsweep.core.errors import RunError
    from fedsweep.federation.runtime.ray_start import _join_kept
    from fedsweep.federation.runtime.ray_state import running_ray

    kept = running_ray()
    if kept is None:
        raise RunError("no local Ray of `fedsweep ray start` is running")
    _join_kept(kept, dashboard=False, trial_output=False, say=False)
    try:
        handles = spawn(count)
        ready, pending = ray.wait([h.where.remote() for h in handles], num_returns=count, timeout=READY_SECONDS)
        if pending:
            raise RunError(f"{len(pending)} of {count} warm workers not started within {READY_SECONDS:g} s")
        ray.get(ready)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    import sys

    _main(int(sys.argv[1]))
