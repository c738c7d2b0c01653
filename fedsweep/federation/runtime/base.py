"""How the driver reaches clients: one small interface, two implementations.

A request to clients is a map over them plus a weighted reduction done where the data
lives (STYLE.md §12): ``map_reduce(request, parts)`` returns, for each part (a set of
clients with a weight each), Σ_i weights[i] · reply_i. Several parts (both groups of a
full communication) go out in one round trip. The runtime does no other maths: the
weights, and what the sums mean, belong to the caller (``fedsweep.federation.oracle``). ``each``
returns every client's own reply instead, for a method that keeps per-client state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError
from fedsweep.federation.client_data import ClientData
from fedsweep.federation.requests import Reply, Request, TrainRequest
from fedsweep.task.losses import Loss, cross_entropy


Part = tuple[np.ndarray, np.ndarray]
"""Client ids and one aggregation weight per client."""


class Runtime(ABC):
    """Serves requests for a run's clients; ``attach`` the clients' data before the first. A
    component: ``runtime._target_`` names the class (or a factory) and its keys are its arguments;
    fedsweep supplies ``device`` and ``label`` (the run's name) to those that take them."""

    uses_ray: bool = False
    """Whether the runtime needs a running Ray (the run starts or joins one first)."""

    @abstractmethod
    def attach(self, data: ClientData, model_fn: Callable[[], nn.Module], *, loss: Loss = cross_entropy) -> None:
        """The run's clients (their data), the model they compute with and its per-example loss."""

    @abstractmethod
    def map_reduce(self, request: Request, parts: Sequence[Part]) -> list[Reply]:
        """For each part ``(clients, weights)``: Σ_i weights[i] · (client ``clients[i]``'s reply
        to ``request``) for every reply field, summed in float64 (a pool's workers send their
        partial sums in the model's dtype); ``VirtualClients.serve`` names the fields."""

    @abstractmethod
    def each(self, request: TrainRequest, clients: np.ndarray) -> Reply:
        """Each client's own reply to a training request, stacked (row r: ``clients[r]``'s), in
        one round trip (``VirtualClients.serve_each``): for methods that keep state per client."""

    @property
    def idle_cpus(self) -> float:
        """CPUs this runtime holds that sit idle between its requests (a pool's workers' shares):
        the driver may compute on them then, e.g. to evaluate the model."""
        return 0.0

    def wait_ready(self) -> None:
        """Block until every worker can serve (start-up is otherwise paid by the first request)."""

    def close(self) -> None:
        """Release workers and devices."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_vectorize(vectorize: object) -> None:
    if vectorize not in ("auto", True, False):
        raise ConfigError(f"runtime.vectorize must be auto, true or false, got runtime.vectorize={shown(vectorize)}")
