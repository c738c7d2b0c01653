"""Every client's examples in one pair of arrays, client after client: clients are data.

A federation of 10,000 clients is not 10,000 objects: it is ``x`` (N, C, H, W),
``y`` (N,) and ``starts`` (K + 1,), client ``i`` holding rows ``starts[i]:starts[i+1]``.
Group f is clients ``0 .. K_f − 1``, group g the rest. The arrays are numpy so that
Ray's object store hands them to every worker of a node zero-copy (one copy per node).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsweep.task.datasets import Dataset
from fedsweep.task.partitions import Partition


@dataclass(frozen=True, eq=False)
class ClientData:
    """The clients' examples, contiguous per client, f clients first."""

    x: np.ndarray  # (N, ...) float32 inputs
    y: np.ndarray  # (N,) int64 labels
    starts: np.ndarray  # (K + 1,) int64: client i holds rows starts[i]:starts[i + 1]
    clients_f: int  # K_f: clients 0 .. K_f − 1 form group f, the rest group g

    @classmethod
    def from_partition(cls, partition: Partition) -> ClientData:
        return cls.from_shards(partition.clients_f, partition.clients_g)

    @classmethod
    def from_shards(cls, clients_f: Sequence[Dataset], clients_g: Sequence[Dataset]) -> ClientData:
        shards = [*clients_f, *clients_g]
        sizes = np.array([len(s) for s in shards], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        x = torch.cat([s.x for s in shards]).cpu().contiguous().numpy()
        y = torch.cat([s.y for s in shards]).cpu().contiguous().numpy()
        return cls(x=x, y=y, starts=starts, clients_f=len(clients_f))

    @property
    def num_clients(self) -> int:
        return len(self.starts) - 1

    @property
    def sizes(self) -> np.ndarray:
        """Examples per client, in client order."""
        return np.diff(self.starts)

    def group(self, name: str) -> np.ndarray:
        """The client ids of group ``name`` (f or g)."""
        if name == "f":
            return np.arange(self.clients_f)
        return np.arange(self.clients_f, self.num_clients)

    def shard(self, client: int) -> Dataset:
        """Client ``client``'s examples as tensors (views of the arrays)."""
        lo, hi = self.starts[client], self.starts[client + 1]
        return Dataset(torch.from_numpy(self.x[lo:hi]), torch.from_numpy(self.y[lo:hi]))
