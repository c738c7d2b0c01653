"""All clients in the driver's process: for tests, debugging and single-machine runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from fedsweep.federation.client_data import ClientData
from fedsweep.federation.runtime.base import Part, Runtime
from fedsweep.federation.requests import Reply, Request, TrainRequest
from fedsweep.federation.virtual_clients import VirtualClients
from fedsweep.task.losses import Loss, cross_entropy


class LocalRuntime(Runtime):
    def __init__(self, *, device: str = "auto") -> None:
        self.device = device
        self.clients: VirtualClients | None = None

    def attach(
        self, data: ClientData, model_fn: Callable[[], nn.Module], *, loss: Loss = cross_entropy, vectorize: bool | str
    ) -> None:
        self.clients = VirtualClients(data, model_fn, loss=loss, device=self.device, vectorize=vectorize)

    def map_reduce(self, request: Request, parts: Sequence[Part]) -> list[Reply]:
        if self.clients is None:
            raise RuntimeError("attach() the clients' data before the first request")
        return [self.clients.serve(request, clients, weights) for clients, weights in parts]

    def each(self, request: TrainRequest, clients: np.ndarray) -> Reply:
        if self.clients is None:
            raise RuntimeError("attach() the clients' data before the first request")
        return self.clients.serve_each(request, clients)
