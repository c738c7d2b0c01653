"""A pool's worker: one process serving any of a run's virtual clients, run as a Ray actor
(``ray_runtime.RayRuntime``), or kept ready for the next run as a warm worker (``warm``)."""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import ray
import torch
from torch import nn

from fedsweep.core.allocator import keep_freed_memory
from fedsweep.federation.client_data import ClientData
from fedsweep.federation.requests import Reply, Request, TrainRequest
from fedsweep.federation.runtime.base import Part
from fedsweep.task.losses import Loss

if TYPE_CHECKING:
    from fedsweep.federation.virtual_clients import VirtualClients


READY_SECONDS = 120.0
"""How long a pool's workers may wait for Ray to place and start them (torch's import included)."""


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to serve a run's clients; put in the object store once per run."""

    data: ClientData
    model_fn: Callable[[], nn.Module]
    loss: Loss
    vectorize: bool | str

    def clients(self, device: str) -> VirtualClients:
        """A server of the run's clients on ``device``, on these arrays (mapped from the object
        store when this setup came from it: not copied)."""
        from fedsweep.federation.virtual_clients import VirtualClients

        return VirtualClients(self.data, self.model_fn, loss=self.loss, device=device, vectorize=self.vectorize)


class Worker:
    """One process serving any of a run's virtual clients (run as a Ray actor); ``warm``: one
    that ``fedsweep ray start`` keeps for the runs to come (``warm.spawn``), which imports
    what a run's first round needs now."""

    def __init__(self, label: str, index: int, num_threads: int, *, warm: bool = False) -> None:
        self._since = time.time_ns()  # a warm worker: source files changed after this are not what it runs
        if warm:  # what a run's first round imports (torch.func imports torch._dynamo: 0.75 s), before the run
            for module in ("torch._dynamo", "fedsweep.federation.virtual_clients"):
                importlib.import_module(module)
        keep_freed_memory()
        torch.set_num_threads(num_threads)
        self.label, self.index = label, index
        self._setup_id: str | None = None
        self._clients = None
        self._owner: str | None = None  # a warm worker: the Ray job of the run it serves
        self._code_path: list[str] | None = None  # a warm worker: its last run's folders
        self._added: list[str] = []  # those of them it put on sys.path

    def __repr__(self) -> str:  # Ray shows it in the dashboard and as the log prefix
        return f"fedsweep_worker[{self.label}#{self.index}]"

    def lease(self, owner: str, label: str, index: int, threads: int, code_path: list[str],
              replacing: str | None = None, deadline: float = float("inf")) -> tuple[str, str | None]:  # fmt: skip
        """A warm worker taken by the run of Ray job ``owner`` as its worker ``index``
        (``fedsweep.federation.runtime.warm``): ``("leased", None)``; ``("taken", job)`` while
        another run's job holds it (``replacing``: that job, which has ended); ``("stale", why)``
        when what it imported is not what the run would (a source file changed since, or a module
        imported from another run's folder that this run's folders may shadow); ``("late", None)``
        after ``deadline`` (``time.time()``), when the run has stopped waiting for this answer."""
        if time.time() > deadline:
            return "late", None
        if self._owner is not None and self._owner != replacing:
            return "taken", self._owner
        changed = changed_since(self._since)
        if changed:
            return "stale", f"{changed} changed since it was imported"
        if self._code_path is not None and self._code_path != code_path:
            shadowed = imported_from([p for p in self._code_path if p not in code_path])
            if shadowed:
                return "stale", f"{shadowed} was imported for another run"
            sys.path[:] = [p for p in sys.path if p not in self._added]
        if self._owner is not None:  # taken over from a run that ended without releasing it
            self._release()
        self._owner, self._code_path, self.label, self.index = owner, list(code_path), label, index
        torch.set_num_threads(threads)
        self._added = [path for path in code_path if path not in sys.path]
        sys.path[:0] = self._added  # the run's plug-ins import as in its own workers (Ray's ``py_driver_sys_path``)
        return "leased", None

    def release(self, owner: str) -> None:
        """A warm worker free again (its run's data dropped), when ``owner``'s run holds it."""
        if self._owner == owner:
            self._release()
            self._owner = None

    def _release(self) -> None:
        self._clients, self._setup_id = None, None
        gc.collect()

    def where(self) -> dict[str, object]:
        """Where this worker runs: its node's address and its process id."""
        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def load(self, setup: list[ray.ObjectRef], setup_id: str, owner: str) -> None:
        """Take the run's clients and model (``setup[0]``: nested, so Ray hands over the reference)
        for the run of Ray job ``owner`` (a warm worker restarted by Ray is leased again)."""
        self._owner = owner
        # Ray hides GPUs from actors without a GPU share, so "auto" is cuda exactly when it holds one
        self._clients = ray.get(setup[0]).clients("auto")  # the arrays are mapped from the object store
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


def changed_since(since_ns: int) -> str | None:
    """The first source file of an imported module modified after ``since_ns`` (``time_ns``), or None."""
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not os.path.isabs(path):  # e.g. torch.ops: "_ops.py"
            continue
        try:
            if os.stat(path).st_mtime_ns > since_ns:
                return path
        except OSError:  # no such file: a module made at run time
            continue
    return None


def imported_from(folders: list[str]) -> str | None:
    """The first imported module whose file lies in one of ``folders``, or None."""
    prefixes = tuple(os.path.join(folder, "") for folder in folders)
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and os.path.abspath(path).startswith(prefixes):
            return name
    return None
