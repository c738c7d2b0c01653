"""What a runtime carries to clients and back: requests for gradients, Hessian-vector products and
local training under a client program, and their replies. Plain, picklable values; the engines
(``fedsweep.federation.virtual_clients``, ``fedsweep.federation.local_training``) answer them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsweep.algorithms.programs import ClientProgram, Vectors
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
class TrainRequest:
    """Each client runs ``program`` from ``x``; minibatches drawn by ``seed``. ``shared``: other
    vectors every client receives; ``rows``: per-client vectors the method keeps for its
    clients, stacked, row r being client ``row_clients[r]``'s (a client not listed gets zeros)."""

    program: ClientProgram
    x: Weights
    seed: int
    shared: Mapping[str, Weights] = field(default_factory=dict)
    rows: Mapping[str, Weights] = field(default_factory=dict)
    row_clients: tuple[int, ...] = ()

    @property
    def vectors(self) -> tuple[Weights, ...]:
        """What every client receives: x and the shared vectors (a client holds its own rows)."""
        return (self.x, *self.shared.values())

    @property
    def nbytes(self) -> int:
        return sum(w.numel * w.dtype.itemsize for w in self.vectors)

    @property
    def transport_bytes(self) -> int:
        """Bytes the request itself carries to a worker (rows included)."""
        return self.nbytes + sum(w.numel * w.dtype.itemsize for w in self.rows.values())

    def rows_for(self, clients: np.ndarray, device: torch.device) -> dict[str, Vectors]:
        """Each row of ``clients``, stacked in their order (zeros for clients not listed)."""
        if not self.rows:
            return {}
        listed = np.asarray(self.row_clients, dtype=np.int64)
        order = np.argsort(listed, kind="stable")
        at = np.minimum(np.searchsorted(listed[order], clients), len(listed) - 1)
        found, index = listed[order][at] == clients, torch.from_numpy(order[at])
        keep = torch.from_numpy(found)
        out = {}
        for key, stacked in self.rows.items():
            picked = [t[index.to(t.device)] for t in stacked.tensors]
            if not found.all():
                picked = [t * keep.view(-1, *([1] * (t.dim() - 1))).to(t.device, t.dtype) for t in picked]
            out[key] = [t.to(device) for t in picked]
        return out


Request = GradRequest | HvpRequest | TrainRequest

SCALAR = "value"  # the one name of a reply field that is a number per client

Reply = dict[str, Weights]
"""A reply field per name: ``Weights`` with the model's names (a vector per client, or their
weighted sum), or with the one name ``value`` (a number per client, or their weighted sum)."""
