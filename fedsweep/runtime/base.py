"""How the driver reaches clients: one small interface, two implementations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from fedsweep.data import Dataset

from fedsweep.methods.oracle import Group
from fedsweep.weights import Weights


@dataclass(frozen=True)
class ClientResources:
    """What each client asks of the scheduler (fractions share a device)."""

    num_cpus: float = 0.25
    num_gpus: float = 0.0


def numbered(shards: Mapping[Group, Sequence[Dataset]]) -> Iterator[tuple[Group, int, Dataset]]:
    """``(group, index, shard)`` for every client, indices running across groups: a client's
    index seeds its minibatches, so both runtimes must number clients alike."""
    index = 0
    for group, datasets in shards.items():
        for data in datasets:
            yield group, index, data
            index += 1


class Runtime(ABC):
    """Broadcasts points to a group's clients and gathers their replies.

    It does no maths: aggregation belongs to the caller.
    """

    @abstractmethod
    def sizes(self, group: Group) -> list[int]:
        """Examples held by each client of ``group``, in client order."""

    @abstractmethod
    def gather_grads(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[list[Weights]]:
        """Each client's gradients at ``points`` (outer list: clients in order)."""

    @abstractmethod
    def gather_updates(
        self, group: Group, x: Weights, *, epochs: int, lr: float, batch_size: int | None, seed: int
    ) -> list[Weights]:
        """Each client's model after local SGD from x (clients in order)."""

    @abstractmethod
    def gather_hvps(self, group: Group, point: Weights, vector: Weights, seed: int | None) -> list[Weights]:
        """Each client's Hessian-vector product at ``point`` (clients in order)."""

    def close(self) -> None:
        """Release clients (actors, devices)."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
