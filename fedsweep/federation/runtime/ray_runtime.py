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

With ``driver_serves`` the run's own process is one of the servers: it sends the workers their
shares, serves the first share itself (its own model, on the object store's arrays), then
gathers. It holds torch, the model and the data anyway and would otherwise wait through every
request: on 2 cores, one worker and the driver keep both busy with a process less.

Faults use Ray's actor fault tolerance: a worker that dies is restarted by Ray
(``max_restarts``) and its request retried (``max_task_retries``); the restarted (fresh)
worker answers that it lacks the run's setup, the driver sends it again (the data is
mapped from the object store, not copied) and repeats the request, and the answer is the
one an undisturbed worker gives. A worker that dies more often than that fails the run
with a one-line :class:`WorkerDiedError`.

In a Ray that holds warm workers (``fedsweep ray start``: ``warm``), the pool leases them
instead of starting actors that import torch (1.1-2.0 s), reserves their CPUs with a
placement group while it runs, and releases them at its end.

Inside a Ray Tune trial the workers join the trial's placement group (Tune captures
child actors by default), which must hold one bundle per worker: see
``fedsweep.sweep.driver.trial_resources``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from torch import nn

from fedsweep.core.checks import check
from fedsweep.core.threads import import_meanwhile
from fedsweep.core.errors import RunError
from fedsweep.federation.client_data import ClientData
from fedsweep.federation.requests import Reply, Request, TrainRequest
from fedsweep.federation.runtime import warm
from fedsweep.federation.runtime.base import Part, Runtime, check_vectorize
from fedsweep.federation.runtime.ray_start import INLINE_BYTES
from fedsweep.federation.runtime.resources import check_fits, local_resources, resolve
from fedsweep.federation.runtime.shares import add_in_order, joined, shares, split
from fedsweep.federation.runtime.worker import READY_SECONDS, SetupMissing, Worker, WorkerSetup
from fedsweep.federation.virtual_clients import VirtualClients
from fedsweep.task.losses import Loss, cross_entropy


@dataclass(frozen=True)
class WorkerResources:
    """What each worker asks of the scheduler (fractions share a device)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


class WorkerDiedError(RunError):
    """A worker died more often than Ray may restart it."""


def ray_pool(
    *,
    workers: int | str = "auto",
    num_cpus: float = 1.0,
    num_gpus: float | str = "auto",
    max_restarts: int = warm.RESTARTS,
    vectorize: bool | str = "auto",
    driver_serves: bool | str = "auto",
    address: str | None = None,
    dashboard: bool = False,
    device: str = "auto",
    label: str = "run",
) -> Runtime:
    """``runtime=ray``: a pool of ``workers`` Ray actors (``auto`` resolved against the running
    Ray's CPUs and GPUs, see ``fedsweep.federation.runtime.resources``), each with ``num_cpus``
    and ``num_gpus``; with no worker (``0``, or ``auto`` below 2 CPUs) the run's own process
    serves its clients. ``driver_serves``: the run's own process also serves a share beside the
    workers (``auto``: when ``workers`` is ``auto`` and the pool computes on CPUs, see
    ``resources.driver_serves``; it then counts as one of the ``auto`` workers). ``address`` and
    ``dashboard`` say which Ray the run starts or joins (``fedsweep.federation.runtime.ray_start``),
    before the pool is made."""
    check_pool(workers=workers, num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, dashboard=dashboard,
               driver_serves=driver_serves)  # fmt: skip
    check_vectorize(vectorize)
    cluster = ray.cluster_resources()
    node = resolve({"workers": workers, "num_cpus": num_cpus, "num_gpus": num_gpus, "driver_serves": driver_serves},
                   cpus=cluster.get("CPU", 1), gpus=cluster.get("GPU", 0))  # fmt: skip
    check_fits(node, cpus=cluster.get("CPU", 0), gpus=cluster.get("GPU", 0), where="the Ray cluster")
    if node["workers"] == 0:
        from fedsweep.federation.runtime.local import LocalRuntime

        return LocalRuntime(vectorize=vectorize, device=device)
    resources = WorkerResources(num_cpus=num_cpus, num_gpus=node["num_gpus"])
    return RayRuntime(workers=node["workers"], resources=resources, label=label, max_restarts=max_restarts,
                      vectorize=vectorize, driver_serves=node["driver_serves"], device=device)  # fmt: skip


def _check_config(*, vectorize: object = "auto", address: object = None, device: object = None, label: object = None,
                  **pool: object) -> None:  # fmt: skip
    check_pool(**{"workers": "auto", "num_cpus": 1.0, "num_gpus": "auto", "max_restarts": 3, "dashboard": False,
                  "driver_serves": "auto", **pool})  # fmt: skip
    check_vectorize(vectorize)
    if address is None and not os.environ.get("RAY_ADDRESS"):  # the Ray this run starts: known before it starts
        cpus, gpus = local_resources()
        node = resolve({"workers": "auto", "num_cpus": 1.0, "num_gpus": "auto", **pool}, cpus=cpus, gpus=gpus)
        check_fits(node, cpus=cpus, gpus=gpus, where="this machine")


ray_pool.name = "ray"  # type: ignore[attr-defined]
ray_pool.uses_ray = True  # type: ignore[attr-defined]
ray_pool.check_config = _check_config  # type: ignore[attr-defined]  # what needs no running Ray


def check_pool(*, workers: object, num_cpus: object, num_gpus: object, max_restarts: object, dashboard: object,
               driver_serves: object = "auto") -> None:  # fmt: skip
    """A pool's keys, one line each (also checked before Ray starts)."""
    if workers != "auto":
        check("runtime.workers", workers, "int >= 0")
    check("runtime.num_cpus", num_cpus, ">= 0")
    if num_gpus != "auto":
        check("runtime.num_gpus", num_gpus, ">= 0")
    check("runtime.max_restarts", max_restarts, "int >= 0")
    check("runtime.dashboard", dashboard, "bool")
    check("runtime.driver_serves", driver_serves, "bool or auto")


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
        driver_serves: bool = False,
        device: str = "auto",
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
            if resources.num_cpus:
                self._reserved = ray.util.placement_group([{"CPU": resources.num_cpus}] * len(self.warm))
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
        self.vectorize, self.driver_serves = vectorize, driver_serves
        self.device = device if resources.num_gpus else "cpu"  # the driver's share where the workers compute
        self.home: VirtualClients | None = None  # the driver's own share's server (``driver_serves``)

    def attach(self, data: ClientData, model_fn: Callable[[], nn.Module], *, loss: Loss = cross_entropy) -> None:
        self._setup = (ray.put(WorkerSetup(data, model_fn, loss, self.vectorize)), uuid.uuid4().hex)
        self._sizes = data.sizes
        for worker in self.workers:  # queued before any request: actor calls run in order
            worker.load.remote([self._setup[0]], self._setup[1], self._job)
        if self.driver_serves:  # on the object store's copy (mapped, zero-copy): the caller's may go
            self.home = ray.get(self._setup[0]).clients(self.device)
            if self.home.stacked:  # vmap imports torch._dynamo at first use (0.9 s here): while the workers start
                import_meanwhile("torch._dynamo")

    @property
    def lanes(self) -> int:
        """How many servers share a request's clients: the workers, and the driver when it serves."""
        return len(self.workers) + bool(self.driver_serves)

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
        local_shares = shares(parts, self._sizes, self.lanes)
        partials = self._scatter(
            lambda worker, local: worker.serve.remote(setup_id, argument, local),
            lambda home, local: [home.serve(request, c, w) if len(c) else None for c, w in local],
            local_shares,
        )
        return add_in_order(partials, len(parts))  # in share order: the same sums whatever finishes first

    def each(self, request: TrainRequest, clients: np.ndarray) -> Reply:
        self._check_attached()
        argument, setup_id = self._argument(request), self._setup[1]
        clients = np.asarray(clients, dtype=np.int64)
        local_shares = [clients[share] for share in split(self._sizes[clients], self.lanes)]
        return joined(self._scatter(lambda worker, share: worker.serve_each.remote(setup_id, argument, share),
                                    lambda home, share: home.serve_each(request, share), local_shares))  # fmt: skip

    def _check_attached(self) -> None:
        if self._setup is None or self._sizes is None:
            raise RuntimeError("attach() the clients' data before the first request")

    def _scatter(self, call: Callable[[ray.actor.ActorHandle, Any], ray.ObjectRef],
                 here: Callable[[VirtualClients, Any], Any], shares: list) -> list:  # fmt: skip
        """The replies to ``shares`` in order: the first served by the driver (``here``) when it
        serves, while the workers serve the rest at once (``call(worker i, share)``, sent
        first). A restarted worker (it answers that it lacks the run's setup) gets the setup
        again and its share anew."""
        mine, shares = (shares[:1], shares[1:]) if self.home is not None else ([], shares)
        refs = [call(worker, share) for worker, share in zip(self.workers, shares)]
        replies = [here(self.home, share) for share in mine]
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
        return self.lanes * self.resources.num_cpus

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
        self._last, self.home = None, None
