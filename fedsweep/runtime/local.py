"""All clients in the driver's process: for tests, debugging and single-machine runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from fedsweep.data import Dataset
from fedsweep.methods.oracle import Group
from fedsweep.runtime.base import Runtime, numbered
from fedsweep.runtime.client import Client
from fedsweep.weights import Weights


class LocalRuntime(Runtime):
    def __init__(
        self,
        shards: dict[Group, Sequence[Dataset]],
        model_fn: Callable[[], nn.Module],
        *,
        batch_size: int | None,
        device: str = "auto",
    ) -> None:
        self.clients: dict[Group, list[Client]] = {group: [] for group in shards}
        for group, index, data in numbered(shards):
            self.clients[group].append(Client(data, model_fn, index=index, batch_size=batch_size, device=device))

    def sizes(self, group: Group) -> list[int]:
        return [c.num_examples() for c in self.clients[group]]

    def gather_grads(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[list[Weights]]:
        return [c.grads(points, seed) for c in self.clients[group]]

    def gather_updates(
        self, group: Group, x: Weights, *, epochs: int, lr: float, batch_size: int | None, seed: int
    ) -> list[Weights]:
        return [c.train(x, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed) for c in self.clients[group]]

    def gather_hvps(self, group: Group, point: Weights, vector: Weights, seed: int | None) -> list[Weights]:
        return [c.hvp(point, vector, seed) for c in self.clients[group]]
