"""A run's clients served by a fixed pool of W Ray actors: clients are data, workers are processes.

The pool starts its W workers at once (they boot and import torch while the driver
loads data), then ``attach`` puts the clients' data and the model constructor in the
object store once: every worker of a node maps the same arrays zero-copy. A request
travels with the call when small, else is put once; the clients of all its parts (both
groups of a full communication) are split into W contiguous shares balanced by examples,
and each worker answers with one partial sum per part, accumulated in float64 and sent in
the model's dtype (float32: half the bytes; FedAvg's round at K = 4 on digits measured
10.4–10.8 ms against 11.5–11.6 ms with float64 replies; the caller rounds the total to
that dtype anyway); the driver adds the partials in float64, in worker order. 10,000 clients are W processes and one round trip, not 10,000.
``each`` (a method that keeps per-client state) splits its clients the same way, and each
worker answers with its clients' own replies stacked; the driver joins them in order.

Faults use Ray's actor fault tolerance: a worker that dies is restarted by Ray
(``max_restarts``) and its request retried (``max_task_retries``); the restarted (fresh)
worker answers that it lacks the run's setup, the driver sends it again (the data is
mapped from the object store, not copied) and repeats the request, and the answer is the
one an undisturbed worker gives. A worker that dies more often than that fails the run
with a one-line :class:`WorkerDiedError`.

Inside a Ray Tune trial the workers join the trial's placement group (Tune captures
child actors by default), which must hold one bundle per worker: see
``fedsweep.sweep.driver.trial_resources``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass

import numpy as np
import ray
from torch import nn

from fedsweep.federation.client_data import ClientData
from fedsweep.core.allocator import keep_freed_memory
from fedsweep.core.errors import RunError
from fedsweep.core.checks import check
from fedsweep.federation.runtime import warm
from fedsweep.federation.runtime.base import Part, Runtime, check_vectorize
from fedsweep.federation.runtime.shares import add_in_order, joined, shares, split
from fedsweep.federation.runtime.resources import check_fits, local_resources, resolve
from fedsweep.federation.runtime.ray_start import INLINE_BYTES
from fedsweep.federation.requests import Reply, Request, TrainRequest
from fedsweep.task.losses import Loss, cross_entropy


@dataclass(frozen=True)
class WorkerResources:
    """What each worker asks of the scheduler (fractions share a device)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to serve a run's clients; put in the object store once per run."""

    data: ClientData
    model_fn: Callable[[], nn.Module]
    loss: Loss
    vectorize: bool | str


READY_SECONDS = 120.0
"""How long a pool's workers may wait for Ray to place and start them (torch's import included)."""


class WorkerDiedError(RunError):
    """A worker died more often than Ray may restart it."""


class Worker:
    """One process serving any of a run's virtual clients (run as a Ray actor)."""

    def __init__(self, label: str, index: int, num_threads: int, *, warm: bool = False) -> None:
        import time

        import torch

        self._since = time.time_ns()  # a warm worker: source files changed after this are not what it runs
        if warm:  # what a run's first round imports (torch.func imports torch._dynamo: 0.75 s), before the run
            import torch._dynamo  # noqa: F401

            from fedsweep.federation import virtual_clients  # noqa: F401
        keep_freed_memory()
        torch.set_num_threads(num_threads)
        self.label, self.index = label, index
        self._setup_id: str | None = None
        self._clients = None
        self._owner: str | None = None  # a warm worker: the Ray job of the run it serves
        self._code_path: list[str] | None = None  # a warm worker: its last run's folders on sys.path

    def __repr__(self) -> str:  # Ray shows it in the dashboard and as the log prefix
        return f"fedsweep_worker[{self.label}#{self.index}]"

    def lease(self, owner: str, label: str, index: int, threads: int, code_path: list[str],
              replacing: str | None = None) -> tuple[str, str | None]:  # fmt: skip
        """A warm worker taken by the run of Ray job ``owner`` as its worker ``index``
        (``fedsweep.federation.runtime.warm``): ``("leased", None)``; ``("taken", job)`` while
        another run's job holds it (``replacing``: that job, which has ended); ``("stale", why)``
        when what it imported is not what the run would (a source file changed since, or a module
        imported from another run's folder that this run's folders may shadow)."""
        import sys

        import torch

        from fedsweep.federation.runtime.warm import changed_since, imported_from

        if self._owner is not None and self._owner != replacing:
            return "taken", self._owner
        changed = changed_since(self._since)
        if changed:
            return "stale", f"{changed} changed since it was imported"
        if self._code_path is not None and self._code_path != code_path:
            shadowed = imported_from([p for p in self._code_path if p not in code_path])
            if shadowed:
                return "stale", f"{shadowed} was imported for another run"
            sys.path[:] = [p for p in sys.path if p not in self._code_path]
        if self._owner is not None:  # taken over from a run that ended without releasing it
            self._release()
        self._owner, self._code_path, self.label, self.index = owner, list(code_path), label, index
        torch.set_num_threads(threads)
        sys.path[:0] = [path for path in code_path if path not in sys.path]  # the run's plug-ins import as in its own workers
        return "leased", None

    def release(self, owner: str) -> None:
        """A warm worker free again (its run's data dropped), when ``owner``'s run holds it."""
        if self._owner == owner:
            self._release()
            self._owner = None

    def _release(self) -> None:
        import gc

        self._clients, self._setup_id = None, None
        gc.collect()

    def where(self) -> dict[str, object]:
        """Where this worker runs: its node's address and its process id."""
        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def load(self, setup: list[ray.ObjectRef], setup_id: str, owner: str) -> None:
        """Take the run's clients and model (``setup[0]``: nested, so Ray hands over the reference)
        for the run of Ray job ``owner`` (a warm worker restarted by Ray is leased again)."""
        from fedsweep.federation.virtual_clients import VirtualClients

        self._owner = owner

        s: WorkerSetup = ray.get(setup[0])  # the arrays are mapped from the object store, not copied
        # Ray hides GPUs from actors without a GPU share, so "auto" is cuda exactly when it holds one
        self._clients = VirtualClients(s.data, s.model_fn, loss=s.loss, device="auto", vectorize=s.vectorize)
        self._setup_id = setup_id

    def serve(self, setup_id: str, request: Request, parts: list[Part]) -> list[Reply | None]:
        """Per part, Σ_i weights[i] · reply_i (None for a part with no client here). A worker
        that does not hold the run's setup (a restarted one) says so and is sent it again."""
        if setup_id != self._setup_id:
            raise SetupMissing(setup_id)
        wire = next(self._clients.model.parameters()).dtype  # a float64 partial in float32 halves the reply
        return [
            {k: v.to(v.device, wire) for k, v in self._clients.serve(request, c, w).items()} if len(c) else None
            for c, w in parts
        ]

    def serve_each(self, setup_id: str, request: TrainRequest, clients: np.ndarray) -> Reply:
        """Each of ``clients``' own reply, stacked (``VirtualClients.serve_each``)."""
        if setup_id != self._setup_id:
            raise SetupMissing(setup_id)
        return self._clients.serve_each(request, clients)


class SetupMissing(Exception):
    """A worker was asked to serve a run whose setup it does not hold (it was restarted)."""


def ray_pool(
    *,
    workers: int | str = "auto",
    num_cpus: float = 1.0,
    num_gpus: float | str = "auto",
    max_restarts: int = 3,
    vectorize: bool | str = "auto",
    address: str | None = None,
    dashboard: bool = False,
    device: str = "auto",
    label: str = "run",
) -> Runtime:
    """``runtime=ray``: a pool of ``workers`` Ray actors (``auto`` resolved against the running
    Ray's CPUs and GPUs, see ``fedsweep.federation.runtime.resources``), each with ``num_cpus``
    and ``num_gpus``; with no worker (``0``, or ``auto`` below 2 CPUs) the run's own process
    serves its clients. ``address`` and ``dashboard`` say which Ray the run starts or joins
    (``fedsweep.federation.runtime.ray_start``), before the pool is made."""
    check_pool(workers=workers, num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, dashboard=dashboard)
    check_vectorize(vectorize)
    cluster = ray.cluster_resources()
    node = resolve({"workers": workers, "num_cpus": num_cpus, "num_gpus": num_gpus},
                   cpus=cluster.get("CPU", 1), gpus=cluster.get("GPU", 0))  # fmt: skip
    check_fits(node, cpus=cluster.get("CPU", 0), gpus=cluster.get("GPU", 0), where="the Ray cluster")
    if node["workers"] == 0:
        from fedsweep.federation.runtime.local import LocalRuntime

        return LocalRuntime(vectorize=vectorize, device=device)
    resources = WorkerResources(num_cpus=num_cpus, num_gpus=node["num_gpus"])
    return RayRuntime(workers=node["workers"], resources=resources, label=label, max_restarts=max_restarts,
                      vectorize=vectorize)  # fmt: skip


def _check_config(*, vectorize: object = "auto", address: object = None, device: object = None, label: object = None,
                  **pool: object) -> None:  # fmt: skip
    check_pool(**{"workers": "auto", "num_cpus": 1.0, "num_gpus": "auto", "max_restarts": 3, "dashboard": False, **pool})
    check_vectorize(vectorize)
    if address is None and not os.environ.get("RAY_ADDRESS"):  # the Ray this run starts: known before it starts
        cpus, gpus = local_resources()
        node = resolve({"workers": "auto", "num_cpus": 1.0, "num_gpus": "auto", **pool}, cpus=cpus, gpus=gpus)
        check_fits(node, cpus=cpus, gpus=gpus, where="this machine")


ray_pool.name = "ray"  # type: ignore[attr-defined]
ray_pool.uses_ray = True  # type: ignore[attr-defined]
ray_pool.check_config = _check_config  # type: ignore[attr-defined]  # what needs no running Ray


def check_pool(*, workers: object, num_cpus: object, num_gpus: object, max_restarts: object, dashboard: object) -> None:
    """A pool's keys, one line each (also checked before Ray starts)."""
    if workers != "auto":
        check("runtime.workers", workers, "int >= 0")
    check("runtime.num_cpus", num_cpus, ">= 0")
    if num_gpus != "auto":
        check("runtime.num_gpus", num_gpus, ">= 0")
    check("runtime.max_restarts", max_restarts, "int >= 0")
    check("runtime.dashboard", dashboard, "bool")


class RayRuntime(Runtime):
    uses_ray = True

    def __init__(
        self,
        *,
        workers: int,
        resources: WorkerResources,
        label: str = "run",
        max_restarts: int = 3,
        vectorize: bool | str = "auto",
    ) -> None:
        if not ray.is_initialized():
            raise RuntimeError("RayRuntime needs a running Ray: call ray.init() first")
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        actor = ray.remote(Worker)
        threads = max(1, int(resources.num_cpus))
        tag = uuid.uuid4().hex[:6]  # names stay unique when a label is reused
        self.label, self.max_restarts, self.resources = label, max_restarts, resources
        self._job = ray.get_runtime_context().get_job_id()
        self.warm: list[ray.actor.ActorHandle] = []  # leased warm workers (kept Ray), first in ``workers``
        self._stale = 0  # warm workers stopped as stale: replaced at the end
        self._reserved = None  # the placement group that holds the warm workers' CPUs
        if warm.usable(num_gpus=resources.num_gpus, max_restarts=max_restarts):
            self.warm, self._stale = warm.lease(workers, label=label, threads=threads)
            if self.warm:
                print(f"Ray: {len(self.warm)} of the pool's {workers} workers are warm ones of `fedsweep ray start`")
        if self.warm:
            self._reserved = ray.util.placement_group([{"CPU": resources.num_cpus}] * len(self.warm)) if resources.num_cpus else None
        self.workers = self.warm + [
            actor.options(
                num_cpus=resources.num_cpus,
                num_gpus=resources.num_gpus,
                max_restarts=max_restarts,
                max_task_retries=max_restarts,
                name=f"fedsweep {label} worker {i + 1}/{workers} {tag}",
            ).remote(label, i, threads)
            for i in range(len(self.warm), workers)
        ]
        self._setup: tuple[ray.ObjectRef, str] | None = None
        self._sizes: np.ndarray | None = None
        self._last: tuple[Request, ray.ObjectRef] | None = None
        self.vectorize = vectorize

    def attach(self, data: ClientData, model_fn: Callable[[], nn.Module], *, loss: Loss = cross_entropy) -> None:
        self._setup = (ray.put(WorkerSetup(data, model_fn, loss, self.vectorize)), uuid.uuid4().hex)
        self._sizes = data.sizes
        for worker in self.workers:  # queued before any request: actor calls run in order
            worker.load.remote([self._setup[0]], self._setup[1], self._job)

    def _argument(self, request: Request):
        """A small request travels with each call (inline); a large one is put in the object
        store once, and the same request again (both groups at the same points) reuses it.
        Requests compare their ``Weights`` by identity; the cache keeps them alive."""
        if request.transport_bytes <= INLINE_BYTES // 2:
            return request
        if self._last is None or self._last[0] != request:
            self._last = (request, ray.put(request))
        return self._last[1]

    def map_reduce(self, request: Request, parts: Sequence[Part]) -> list[Reply]:
        self._check_attached()
        argument, setup_id = self._argument(request), self._setup[1]
        local_shares = shares(parts, self._sizes, len(self.workers))
        partials = self._scatter(lambda worker, local: worker.serve.remote(setup_id, argument, local), local_shares)
        return add_in_order(partials, len(parts))  # in worker order: the same sums whatever finishes first

    def each(self, request: TrainRequest, clients: np.ndarray) -> Reply:
        self._check_attached()
        argument, setup_id = self._argument(request), self._setup[1]
        clients = np.asarray(clients, dtype=np.int64)
        local_shares = [clients[share] for share in split(self._sizes[clients], len(self.workers))]
        return joined(self._scatter(lambda worker, share: worker.serve_each.remote(setup_id, argument, share), local_shares))

    def _check_attached(self) -> None:
        if self._setup is None or self._sizes is None:
            raise RuntimeError("attach() the clients' data before the first request")

    def _scatter(self, call: Callable[[ray.actor.ActorHandle, Any], ray.ObjectRef], shares: list) -> list:
        """``call(worker i, shares[i])`` on every worker at once; the replies in worker order. A
        restarted worker (it answers that it lacks the run's setup) gets the setup again and
        its share anew."""
        refs = [call(worker, share) for worker, share in zip(self.workers, shares)]
        replies = []
        for index, (ref, share) in enumerate(zip(refs, shares)):
            try:
                replies.append(self._get(ref, index))
            except SetupMissing:
                worker = self.workers[index]
                setup_ref, setup_id = self._setup
                worker.load.remote([setup_ref], setup_id, self._job)
                replies.append(self._get(call(worker, share), index))
        return replies

    def _get(self, ref: ray.ObjectRef, index: int):
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            raise WorkerDiedError(self._death(index, err)) from None

    def _death(self, index: int, err: Exception) -> str:
        """One line: which worker, where, how often it died, and Ray's account of the last death."""
        text = str(err)
        ip, pid = re.search(r"\bip: (\S+)", text), re.search(r"\bpid: (\d+)", text)
        detail = re.search(r"Worker exit detail: ([^.]*)", text)
        cause = text.strip().splitlines()[0] + (f" ({detail.group(1)})" if detail else "")
        where = f"on node {ip.group(1)}" if ip else "on an unknown node"
        where += f", pid {pid.group(1)}" if pid else ""
        return (
            f"worker {index + 1}/{len(self.workers)} of {self.label} ({where}) died {self.max_restarts + 1} time(s), "
            f"more than runtime.max_restarts={self.max_restarts} allows: {cause}"
        )

    @property
    def idle_cpus(self) -> float:
        return len(self.workers) * self.resources.num_cpus

    def wait_ready(self, timeout: float | None = None) -> None:
        """Every worker started; a pool Ray cannot place within ``timeout`` seconds (default
        :data:`READY_SECONDS`; a cluster that shrank, or is busy) stops the run in one line."""
        refs = [w.where.remote() for w in self.workers]
        timeout = READY_SECONDS if timeout is None else timeout
        reserved = [self._reserved.ready()] if self._reserved is not None else []
        ready, pending = ray.wait(refs + reserved, num_returns=len(refs) + len(reserved), timeout=timeout)
        if pending:
            free = ray.available_resources()
            missing = sum(ref in pending for ref in refs) or len(self.warm)  # else the warm workers' CPUs are not free
            raise RunError(
                f"{missing} of {len(refs)} workers of {self.label} not started within {timeout:g} s "
                f"(each asks runtime.num_cpus={self.resources.num_cpus:g}, runtime.num_gpus={self.resources.num_gpus:g}; "
                f"the Ray cluster has {free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} GPUs free)"
            )
        for index, ref in enumerate(refs):
            self._get(ref, index)

    def close(self) -> None:
        for worker in self.workers[len(self.warm) :]:
            ray.kill(worker)
        warm.release(self.warm)  # free for the next run
        warm.spawn(self._stale)
        if self._reserved is not None:
            ray.util.remove_placement_group(self._reserved)
        self.workers, self.warm, self._reserved, self._stale = [], [], None, 0
        self._last = None
