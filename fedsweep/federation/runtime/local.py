"""All clients in the driver's process: for tests, debugging and single-machine runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from fedsweep.federation.client_data import ClientData
from fedsweep.federation.runtime.base import Part, Runtime, check_vectorize
from fedsweep.federation.requests import Reply, Request, TrainRequest
from fedsweep.federation.virtual_clients import VirtualClients
from fedsweep.task.losses import Loss, cross_entropy


class LocalRuntime(Runtime):
    """``vectorize``: batch many clients' work (auto: unless the model has BatchNorm); ``device``
    (set by fedsweep from the config's ``device``): where the clients compute."""

    name = "local"
    uses_ray = False

    def __init__(self, *, vectorize: bool | str = "auto", device: str = "auto") -> None:
        check_vectorize(vectorize)
        self.device, self.vectorize = device, vectorize
        self.clients: VirtualClients | None = None

    def attach(self, data: ClientData, model_fn: Callable[[], nn.Module], *, loss: Loss = cross_entropy) -> None:
        self.clients = VirtualClients(data, model_fn, loss=loss, device=self.device, vectorize=self.vectorize)

    def map_reduce(self, request: Request, parts: Sequence[Part]) -> list[Reply]:
        if self.clients is None:
            raise RuntimeError("attach() the clients' data before the first request")
        return [self.clients.serve(request, clients, weights) for clients, weights in parts]

    def each(self, request: TrainRequest, clients: np.ndarray) -> Reply:
        if self.clients is None:
            raise RuntimeError("attach() the clients' data before the first request")
        return self.clients.serve_each(request, clients)
