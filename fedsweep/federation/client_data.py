"""Every client's examples in one pair of arrays, client after client: clients are data.

A federation of 10,000 clients is not 10,000 objects: it is ``x`` (N, C, H, W), ``y`` (N,)
and ``starts`` (K + 1,), client ``i`` holding rows ``starts[i]:starts[i+1]``. Groups are
contiguous runs of clients, in the partition's order. The arrays are numpy so that Ray's
object store hands them to every worker of a node zero-copy (one copy per node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsweep.task.datasets import Dataset
from fedsweep.task.partitions import Partition


@dataclass(frozen=True, eq=False)
class ClientLayout:
    """Which rows each client holds, and the groups: what the driver needs to know of the
    clients when a pool holds their examples (the oracle's weights and participation)."""

    starts: np.ndarray  # (K + 1,) int64: client i holds rows starts[i]:starts[i + 1]
    groups: Mapping[str, tuple[int, int]]  # group name -> its clients' id range [first, last + 1)

    @property
    def num_clients(self) -> int:
        return len(self.starts) - 1

    @property
    def sizes(self) -> np.ndarray:
        """Examples per client, in client order."""
        return np.diff(self.starts)

    def group(self, name: str) -> np.ndarray:
        """The client ids of group ``name``."""
        first, end = self.groups[name]
        return np.arange(first, end)

    def group_of(self, clients: np.ndarray) -> np.ndarray:
        """The index (in ``groups``' order) of each client's group."""
        ends = np.array([end for _, end in self.groups.values()])
        return np.searchsorted(ends, clients, side="right")


@dataclass(frozen=True, eq=False)
class ClientData(ClientLayout):
    """The clients' examples, contiguous per client, groups one after another."""

    x: np.ndarray  # (N, ...) float32 inputs
    y: np.ndarray  # (N,) labels

    @classmethod
    def from_partition(cls, partition: Partition) -> ClientData:
        return cls.from_groups(partition.clients)

    @classmethod
    def from_groups(cls, groups: Mapping[str, Sequence[Dataset]]) -> ClientData:
        shards = [shard for clients in groups.values() for shard in clients]
        sizes = np.array([len(s) for s in shards], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        x, y = _joined([s.x for s in shards]), _joined([s.y for s in shards])
        bounds, first = {}, 0
        for name, clients in groups.items():
            bounds[name] = (first, first + len(clients))
            first += len(clients)
        return cls(x=x, y=y, starts=starts, groups=bounds)

    @property
    def layout(self) -> ClientLayout:
        """The clients without their examples."""
        return ClientLayout(starts=self.starts, groups=self.groups)

    def shard(self, client: int) -> Dataset:
        """Client ``client``'s examples as tensors (views of the arrays)."""
        lo, hi = self.starts[client], self.starts[client + 1]
        return Dataset(torch.from_numpy(self.x[lo:hi]), torch.from_numpy(self.y[lo:hi]))


def _joined(parts: list[torch.Tensor]) -> np.ndarray:
    """``torch.cat(parts)`` as numpy; without a copy when the parts are consecutive contiguous
    views of one CPU tensor (``Dataset.split``'s shards): the run then holds its clients' data once."""
    first = parts[0]
    consecutive = first.device.type == "cpu" and all(p.is_contiguous() and p.dtype == first.dtype for p in parts)
    if consecutive:
        storage, address = first.untyped_storage().data_ptr(), first.data_ptr()
        for part in parts:
            consecutive = consecutive and part.untyped_storage().data_ptr() == storage and part.data_ptr() == address
            address += part.numel() * part.element_size()
    if not consecutive:
        return torch.cat(parts).cpu().contiguous().numpy()
    rows = sum(p.shape[0] for p in parts)
    return first.as_strided((rows, *first.shape[1:]), first.stride()).numpy()
