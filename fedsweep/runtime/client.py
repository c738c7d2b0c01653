"""A federated client: one data shard and a model, answering gradient requests.

The same class runs in-process (``LocalRuntime``) and as a long-lived Ray actor
(``RayRuntime``), so both runtimes compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedsweep.data import Dataset
from fedsweep.task import local_sgd, mean_grads, mean_hvp, resolve_device
from fedsweep.weights import Weights


def client_seed(seed: int | None, index: int) -> int | None:
    """Each client's own minibatch seed, derived from the round's seed and its index."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class Client:
    """Holds a shard and a model; answers gradient, HVP and local-training requests.

    Replies stay on the client's device: in-process they are used where they are,
    and through Ray a ``Weights`` pickles itself to host memory.
    """

    def __init__(
        self,
        data: Dataset,
        model_fn: Callable[[], nn.Module],
        *,
        index: int,
        batch_size: int | None,
        device: str = "auto",
        num_threads: int | None = None,
    ) -> None:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = resolve_device(device)  # resolved here: inside an actor, CUDA follows its GPU share
        self.data = Dataset(data.x.to(self.device), data.y.to(self.device))
        self.model = model_fn().to(self.device)
        self.index = index
        self.batch_size = batch_size

    def num_examples(self) -> int:
        return len(self.data)

    def grads(self, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        """∇(mean loss on this shard) at each point, on one minibatch drawn by ``seed``."""
        points = [p.to(self.device) for p in points]
        return mean_grads(self.model, self.data, points, batch_size=self.batch_size, seed=client_seed(seed, self.index))

    def train(self, point: Weights, *, epochs: int, lr: float, batch_size: int | None, seed: int) -> Weights:
        """The model after ``epochs`` of plain SGD from ``point`` on this shard (FedAvg's local work)."""
        return local_sgd(
            self.model, self.data, point.to(self.device),
            epochs=epochs, lr=lr, batch_size=batch_size, seed=client_seed(seed, self.index),
        )

    def hvp(self, point: Weights, vector: Weights, seed: int | None) -> Weights:
        """∇²(mean loss on this shard)(point) · vector."""
        return mean_hvp(
            self.model, self.data, point.to(self.device), vector.to(self.device),
            batch_size=self.batch_size, seed=client_seed(seed, self.index),
        )
