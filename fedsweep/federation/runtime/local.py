"""All clients in the driver's process: single-machine runs, tests and debugging.

With ``threads`` T > 1 a request's clients are split into T shares balanced by examples, as a
pool splits them over its workers (``fedsweep.federation.runtime.shares``), and each share is
served by its own thread with its own model and one torch thread, on the same copy of the
data; the partial sums are added in share order, so the numbers do not depend on which thread
finishes first. Torch's own threads inside one op gain little on small clients' minibatches
and spin while another process holds a core; whole clients per thread keep every core busy
(figures in docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from fedsweep.core.checks import is_int, shown
from fedsweep.core.threads import map_on_threads
from fedsweep.core.errors import ConfigError
from fedsweep.federation.client_data import ClientData
from fedsweep.federation.requests import Reply, Request, TrainRequest
from fedsweep.federation.runtime.base import Part, Runtime, check_vectorize
from fedsweep.federation.runtime.shares import add_in_order, joined, shares, split
from fedsweep.federation.virtual_clients import VirtualClients
from fedsweep.task.models import convolves
from fedsweep.task.losses import Loss, cross_entropy


class LocalRuntime(Runtime):
    """``vectorize``: batch many clients' work (auto: see ``engines``); ``threads``: how many
    threads serve the clients (auto: torch's threads for a convolutional model on a CPU, else
    one: an MLP's steps are too small to pay for the threads' hand-offs); ``device`` (set by
    fedsweep from the config's ``device``): where the clients compute."""

    name = "local"
    uses_ray = False

    def __init__(self, *, vectorize: bool | str = "auto", threads: int | str = "auto", device: str = "auto") -> None:
        check_vectorize(vectorize)
        check_threads(threads)
        self.device, self.vectorize, self.threads = device, vectorize, threads
        self.servers: list[VirtualClients] = []
        self._sizes: np.ndarray | None = None
        self._pool: ThreadPoolExecutor | None = None

    def attach(self, data: ClientData, model_fn: Callable[[], nn.Module], *, loss: Loss = cross_entropy) -> None:
        self.close()  # a runtime attached again (reused across runs) serves only the new clients
        first = VirtualClients(data, model_fn, loss=loss, device=self.device, vectorize=self.vectorize)
        count = self.threads
        if count == "auto":  # threads pay off on a CPU for convolutions, not for an MLP's small steps
            count = torch.get_num_threads() if first.device.type == "cpu" and convolves(first.model) else 1
        count = max(1, min(int(count), data.num_clients))
        extra = [VirtualClients(data, model_fn, loss=loss, device=self.device, vectorize=self.vectorize)
                 for _ in range(count - 1)]  # fmt: skip
        self.servers, self._sizes = [first, *extra], data.sizes
        if count > 1:
            self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="fedsweep-client")

    @property
    def idle_cpus(self) -> float:
        return float(len(self.servers)) if self._pool is not None else 0.0

    def map_reduce(self, request: Request, parts: Sequence[Part]) -> list[Reply]:
        self._check_attached()
        if self._pool is None:
            return [self.servers[0].serve(request, clients, weights) for clients, weights in parts]

        def serve(server: VirtualClients, share: list[Part]) -> list[Reply | None]:
            return [server.serve(request, c, w) if len(c) else None for c, w in share]

        work = shares(parts, self._sizes, len(self.servers))
        return add_in_order(map_on_threads(serve, self.servers, work, pool=self._pool), len(parts))

    def each(self, request: TrainRequest, clients: np.ndarray) -> Reply:
        self._check_attached()
        if self._pool is None:
            return self.servers[0].serve_each(request, clients)
        clients = np.asarray(clients, dtype=np.int64)
        work = [clients[share] for share in split(self._sizes[clients], len(self.servers))]
        return joined(map_on_threads(lambda server, share: server.serve_each(request, share), self.servers, work,
                                     pool=self._pool))  # fmt: skip

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self.servers, self._sizes, self._pool = [], None, None

    def _check_attached(self) -> None:
        if not self.servers:
            raise RuntimeError("attach() the clients' data before the first request")


def check_threads(threads: object) -> None:
    if threads != "auto" and not (is_int(threads) and threads >= 1):
        raise ConfigError(f"runtime.threads must be auto or an integer >= 1, got runtime.threads={shown(threads)}")
