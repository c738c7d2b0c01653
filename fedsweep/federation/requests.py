"""What a runtime carries to clients: requests for gradients, Hessian-vector products and local
training. Plain, picklable values; the engines (``fedsweep.federation.virtual_clients``) answer them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsweep.core.weights import Weights


class _Payload:
    @property
    def nbytes(self) -> int:
        """Bytes of the vectors a client receives with this request (and sends back)."""
        return sum(w.numel * w.dtype.itemsize for w in self.vectors)

    @property
    def transport_bytes(self) -> int:
        """Bytes the request itself carries to a worker."""
        return self.nbytes


@dataclass(frozen=True)
class GradRequest(_Payload):
    """∇F_i at each point, on each client's minibatch drawn by ``seed`` (None: its whole shard);
    with a ``snapshot``, ∇F_i(point) − ∇F_i(snapshot) on the same minibatch. Clients hold the
    snapshot since the round's full communication, so only the points travel to them."""

    points: tuple[Weights, ...]
    batch_size: int | None
    seed: int | None
    snapshot: Weights | None = None

    @property
    def vectors(self) -> tuple[Weights, ...]:
        return self.points

    @property
    def transport_bytes(self) -> int:
        return self.nbytes + (0 if self.snapshot is None else self.snapshot.numel * self.snapshot.dtype.itemsize)


@dataclass(frozen=True)
class HvpRequest(_Payload):
    """∇²F_i(point) · vector, on each client's minibatch drawn by ``seed``."""

    point: Weights
    vector: Weights
    batch_size: int | None
    seed: int | None

    @property
    def vectors(self) -> tuple[Weights, ...]:
        return (self.point, self.vector)


@dataclass(frozen=True)
class TrainRequest(_Payload):
    """Each client's model after ``epochs`` of plain SGD (step ``lr``) from ``x`` on its shard,
    on F_i(w) + (prox/2)·‖w − x‖² + ⟨d_i, w⟩: FedProx's proximal term (0 for FedAvg) and a
    per-client drift correction d_i (SCAFFOLD's c − c_i; none without ``drift``).

    ``drift`` stacks the d_i of the clients ``drift_clients`` (row r is client
    ``drift_clients[r]``'s); a client not listed has d_i = 0. With ``drift`` the reply is two
    sums: the models, and the mean of each client's minibatch gradients ∇F_i over its local
    steps (SCAFFOLD's new control variate c_i⁺, option II). The client receives x and the
    server's control c (it holds its own c_i) and sends its model and c_i⁺: two vectors
    each way (``nbytes``), whatever travels in this simulation."""

    x: Weights
    epochs: int
    lr: float
    batch_size: int | None
    seed: int
    prox: float = 0.0
    drift: Weights | None = None
    drift_clients: tuple[int, ...] = ()

    @property
    def vectors(self) -> tuple[Weights, ...]:
        return (self.x,) if self.drift is None else (self.x, self.x)

    @property
    def transport_bytes(self) -> int:
        drift = 0 if self.drift is None else self.drift.numel * self.drift.dtype.itemsize
        return self.x.numel * self.x.dtype.itemsize + drift

    def drift_rows(self, clients: np.ndarray, device: torch.device) -> Weights | None:
        """The d_i of ``clients`` stacked in their order (zero rows for clients not listed)."""
        if self.drift is None:
            return None
        listed = np.asarray(self.drift_clients, dtype=np.int64)
        order = np.argsort(listed, kind="stable")
        at = np.minimum(np.searchsorted(listed[order], clients), len(listed) - 1)
        found, rows = listed[order][at] == clients, order[at]
        if found.all():
            return rows_of(self.drift, rows).to(device)
        keep = torch.from_numpy(found)
        return Weights(
            {
                name: (t[torch.from_numpy(rows)] * keep.view(-1, *([1] * (t.dim() - 1))).to(t.dtype)).to(device)
                for name, t in self.drift.items()
            }
        )


Request = GradRequest | HvpRequest | TrainRequest


def rows_of(stacked: Weights, positions: np.ndarray) -> Weights:
    """Rows ``positions`` of per-client stacked tensors (views when they are consecutive)."""
    if len(positions) and np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))):
        return Weights({name: t[int(positions[0]) : int(positions[0]) + len(positions)] for name, t in stacked.items()})
    index = torch.from_numpy(positions)
    return Weights({name: t[index.to(t.device)] for name, t in stacked.items()})
