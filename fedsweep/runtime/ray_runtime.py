"""A run's clients served by a fixed pool of W Ray actors: clients are data, workers are processes.

The pool starts its W workers at once (they boot and import torch while the driver
loads data), then ``attach`` puts the clients' data and the model constructor in the
object store once: every worker of a node maps the same arrays zero-copy. A request is
put once too, split into W contiguous shares of clients balanced by examples, and each
worker answers with one float64 partial sum; the driver adds the W partials in worker
order. 10,000 clients are W processes, not 10,000.

Faults use Ray's actor fault tolerance: a worker that dies is restarted by Ray
(``max_restarts``) and its request retried (``max_task_retries``); requests carry a
reference to the run's setup, so a restarted (fresh) worker reloads the data before
answering, and the answer is the one an undisturbed worker gives. A worker that dies
more often than that fails the run with a one-line :class:`WorkerDiedError`.

Inside a Ray Tune trial the workers join the trial's placement group (Tune captures
child actors by default), which must hold one bundle per worker: see
``fedsweep.tune.trial_resources``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import ray
from torch import nn

from fedsweep.data.client_data import ClientData
from fedsweep.runtime.base import Runtime
from fedsweep.runtime.virtual_clients import Request
from fedsweep.weights import Weights


@dataclass(frozen=True)
class WorkerResources:
    """What each worker asks of the scheduler (fractions share a device)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class Setup:
    """What a worker needs to serve a run's clients; put in the object store once per run."""

    data: ClientData
    model_fn: Callable[[], nn.Module]
    vectorize: bool | str


class WorkerDiedError(RuntimeError):
    """A worker died more often than Ray may restart it."""


class Worker:
    """One process serving any of a run's virtual clients (run as a Ray actor)."""

    def __init__(self, label: str, index: int, num_threads: int) -> None:
        import torch

        torch.set_num_threads(num_threads)
        self.label, self.index = label, index
        self._setup_id: str | None = None
        self._clients = None

    def __repr__(self) -> str:  # Ray shows it in the dashboard and as the log prefix
        return f"fedsweep_worker[{self.label}#{self.index}]"

    def where(self) -> dict[str, object]:
        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def serve(
        self, setup: list[ray.ObjectRef], setup_id: str, request: Request, clients: np.ndarray, weights: np.ndarray
    ) -> list[Weights]:
        """Σ_i weights[i] · reply_i for ``clients``; (re)loads the run's setup when it is new
        to this process (first request, or the first after a restart)."""
        if setup_id != self._setup_id:
            from fedsweep.runtime.virtual_clients import VirtualClients

            s: Setup = ray.get(setup[0])  # the arrays are mapped from the object store, not copied
            # Ray hides GPUs from actors without a GPU share, so "auto" is cuda exactly when it holds one
            self._clients = VirtualClients(s.data, s.model_fn, device="auto", vectorize=s.vectorize)
            self._setup_id = setup_id
        return self._clients.serve(request, clients, weights)


def split(sizes: np.ndarray, parts: int) -> list[slice]:
    """At most ``parts`` contiguous, non-empty slices of clients with about equal examples."""
    cumulative = np.cumsum(sizes)
    targets = cumulative[-1] * np.arange(1, parts) / parts
    cuts = np.unique(np.concatenate([[0], np.searchsorted(cumulative, targets, side="right"), [len(sizes)]]))
    return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


class RayRuntime(Runtime):
    def __init__(
        self,
        *,
        workers: int,
        resources: WorkerResources,
        label: str = "run",
        max_restarts: int = 3,
    ) -> None:
        if not ray.is_initialized():
            raise RuntimeError("RayRuntime needs a running Ray: call ray.init() first")
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        actor = ray.remote(Worker)
        threads = max(1, int(resources.num_cpus))
        tag = uuid.uuid4().hex[:6]  # names stay unique when a label is reused
        self.label, self.max_restarts = label, max_restarts
        self.workers = [
            actor.options(
                num_cpus=resources.num_cpus,
                num_gpus=resources.num_gpus,
                max_restarts=max_restarts,
                max_task_retries=max_restarts,
                name=f"fedsweep {label} worker {i + 1}/{workers} {tag}",
            ).remote(label, i, threads)
            for i in range(workers)
        ]
        self._where = [w.where.remote() for w in self.workers]  # read only to name a dead worker
        self._setup: tuple[ray.ObjectRef, str] | None = None
        self._sizes: np.ndarray | None = None
        self._last: tuple[Request, ray.ObjectRef] | None = None

    def attach(self, data: ClientData, model_fn: Callable[[], nn.Module], *, vectorize: bool | str) -> None:
        self._setup = (ray.put(Setup(data, model_fn, vectorize)), uuid.uuid4().hex)
        self._sizes = data.sizes

    def _put(self, request: Request) -> ray.ObjectRef:
        """One object-store put per request; the same request again (a full communication
        asks both groups at the same points) reuses it. Requests compare their ``Weights``
        by identity, and the cache keeps them alive."""
        if self._last is None or self._last[0] != request:
            self._last = (request, ray.put(request))
        return self._last[1]

    def map_reduce(self, request: Request, clients: np.ndarray, weights: np.ndarray) -> list[Weights]:
        if self._setup is None or self._sizes is None:
            raise RuntimeError("attach() the clients' data before the first request")
        clients, weights = np.asarray(clients, dtype=np.int64), np.asarray(weights, dtype=np.float64)
        setup_ref, setup_id = self._setup
        request_ref = self._put(request)
        shares = split(self._sizes[clients], len(self.workers))
        refs = [
            worker.serve.remote([setup_ref], setup_id, request_ref, clients[share], weights[share])
            for worker, share in zip(self.workers, shares)
        ]
        total: list[Weights] | None = None
        for index, ref in enumerate(refs):  # in worker order: the same sum whatever finishes first
            partial = self._get(ref, index)
            if total is None:
                total = [p.clone() for p in partial]  # replies are read-only views of the object store
            else:
                for t, p in zip(total, partial):
                    t.add_(p)
        assert total is not None
        return total

    def _get(self, ref: ray.ObjectRef, index: int) -> list[Weights]:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            raise WorkerDiedError(self._death(index, err)) from None

    def _death(self, index: int, err: Exception) -> str:
        try:
            where = ray.get(self._where[index], timeout=1)
            place = f"on node {where['node']} (first pid {where['pid']})"
        except Exception:  # noqa: BLE001 - the worker never started: say so rather than fail here
            place = "before it reported its node"
        cause = " ".join(str(err).split())
        return (
            f"worker {index + 1}/{len(self.workers)} of {self.label} {place} died "
            f"{self.max_restarts + 1} time(s), more than max_restarts={self.max_restarts}: {cause[:300]}"
        )

    def pids(self) -> list[int]:
        """The workers' current process ids (for tests and monitoring)."""
        return [int(p["pid"]) for p in ray.get([w.where.remote() for w in self.workers])]

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        self._last = None
