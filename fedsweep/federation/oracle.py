"""The federation seen as a gradient oracle: a runtime's clients plus the server.

Implements ``fedsweep.algorithms.protocols.GradientOracle``. It turns a method's question
("∇f at these points", "FedAvg's local models of group g") into one request to the
runtime with the right aggregation weights (``fedsweep.algorithms.aggregation``), brings the
float64 sum back to the server's device and dtype, and counts the logical federation's
communication: contacts per group, client messages, and bytes as if every contacted
client received the request and sent its own reply, however many workers served them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsweep.federation.client_data import ClientData
from fedsweep.algorithms.protocols import Solution
from fedsweep.algorithms.aggregation import group_weights, participation_weights, sampled_weights
from fedsweep.algorithms.protocols import Group
from fedsweep.federation.runtime.base import Runtime
from fedsweep.federation.requests import GradRequest, HvpRequest, Request, TrainRequest
from fedsweep.federation.server import Server
from fedsweep.core.weights import Weights


@dataclass
class CommStats:
    """Cumulative communication: group contacts, client messages and bytes (payloads, both ways).

    A contact is one request to the contacted clients of a group and their replies.
    """

    rounds: dict[str, int] = field(default_factory=lambda: {"f": 0, "g": 0})
    messages: int = 0  # client replies (one per contacted client per contact)
    bytes_sent: int = 0
    bytes_received: int = 0

    def as_metrics(self) -> dict[str, float]:
        return {
            "comm/f": float(self.rounds["f"]),
            "comm/g": float(self.rounds["g"]),
            "comm/total": float(self.rounds["f"] + self.rounds["g"]),
            "comm/messages": float(self.messages),
            "comm/bytes_sent": float(self.bytes_sent),
            "comm/bytes_received": float(self.bytes_received),
        }


class FederatedOracle:
    def __init__(
        self,
        runtime: Runtime,
        clients: ClientData,
        server: Server,
        *,
        batch_size: int | None,
        deterministic: bool,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.runtime = runtime
        self.server_node = server
        self.batch_size = batch_size
        self._deterministic = deterministic
        self.device, self.dtype = device, dtype
        self.comm = CommStats()
        self._ids = {g: clients.group(g) for g in ("f", "g")}
        self._sizes = {g: clients.sizes[ids] for g, ids in self._ids.items()}

    @property
    def deterministic(self) -> bool:
        return self._deterministic

    def num_clients(self, group: Group) -> int:
        return len(self._ids[group])

    def _contact(self, group: Group, subset: np.ndarray | None, weights) -> tuple[np.ndarray, np.ndarray]:
        """Client ids and weights of a request to ``group`` (all its clients unless ``subset``)."""
        sizes = self._sizes[group]
        if subset is None:
            return self._ids[group], group_weights(sizes)
        return self._ids[group][subset], weights(sizes, subset)

    def _request(self, request: Request, subsets: Mapping[Group, np.ndarray | None], weights):
        """One round trip to the groups in ``subsets``; each group's sums, back on the server's
        device and dtype, and the communication counted per group."""
        parts = {group: self._contact(group, subset, weights) for group, subset in subsets.items()}
        sums = self.runtime.map_reduce(request, list(parts.values()))
        out = {}
        for (group, (ids, _)), group_sums in zip(parts.items(), sums):
            self._count(group, len(ids), request.nbytes)
            out[group] = [s.to(self.device, self.dtype) for s in group_sums]
        return out

    def clients(
        self,
        group: Group,
        points: Sequence[Weights],
        seed: int | None,
        *,
        subset: np.ndarray | None = None,
        snapshot: Weights | None = None,
    ) -> list[Weights]:
        return self.gradients({group: subset}, points, seed, snapshot=snapshot)[group]

    def full_communication(self, points: Sequence[Weights]) -> dict[Group, list[Weights]]:
        return self.gradients({"f": None, "g": None}, points, None)

    def gradients(
        self,
        subsets: Mapping[Group, np.ndarray | None],
        points: Sequence[Weights],
        seed: int | None,
        *,
        snapshot: Weights | None = None,
    ) -> dict[Group, list[Weights]]:
        """∇G at each point (minus ∇G at ``snapshot``, if given) for every group of ``subsets``
        (sampled clients: unbiased estimates), on the clients' minibatches drawn by ``seed``
        (``None``: whole shards, exact)."""
        batch_size = None if seed is None else self.batch_size
        request = GradRequest(tuple(points), batch_size, seed, snapshot)
        return self._request(request, subsets, sampled_weights)

    def local_updates(
        self,
        x: Weights,
        *,
        epochs: int,
        lr: float,
        batch_size: int | None,
        seed: int,
        subsets: Mapping[Group, np.ndarray | None],
        prox: float = 0.0,
    ) -> dict[Group, Weights]:
        sums = self._request(TrainRequest(x, epochs, lr, batch_size, seed, prox), subsets, participation_weights)
        return {group: total for group, (total,) in sums.items()}

    def local_runs(
        self,
        x: Weights,
        *,
        epochs: int,
        lr: float,
        batch_size: int | None,
        seed: int,
        subsets: Mapping[Group, np.ndarray | None],
        drift: Mapping[Group, Weights],
    ) -> dict[Group, tuple[Weights, Weights]]:
        """Each contacted client's own reply, both groups in one round trip (``Runtime.each``)."""
        ids = {group: self._contact(group, subset, participation_weights)[0] for group, subset in subsets.items()}
        every = np.concatenate(list(ids.values()))
        stacked = Weights(
            {name: torch.cat([drift[group][name] for group in subsets]).detach().cpu() for name in x.names}
        )
        request = TrainRequest(x, epochs, lr, batch_size, seed, drift=stacked, drift_clients=tuple(every.tolist()))
        models, means = self.runtime.each(request, every)
        out, lo = {}, 0
        for group, group_ids in ids.items():
            self._count(group, len(group_ids), request.nbytes)
            rows = slice(lo, lo + len(group_ids))
            out[group] = tuple(Weights({n: t[rows] for n, t in w.items()}).to(self.device, self.dtype) for w in (models, means))
            lo += len(group_ids)
        return out

    def client_sizes(self, group: Group) -> np.ndarray:
        return self._sizes[group].copy()

    def server(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        return self.server_node.grads(group, points, seed)

    def client_hvp(self, group: Group, point: Weights, vector: Weights, *, batch_size: int | None, seed: int | None) -> Weights:
        """∇²G(point) · vector (``batch_size`` None: whole shards, exact). A diagnostic: not counted
        in ``comm``, which measures the methods."""
        ids, weights = self._contact(group, None, group_weights)
        ((total,),) = self.runtime.map_reduce(HvpRequest(point, vector, batch_size, seed), [(ids, weights)])
        return total.to(self.device, self.dtype)

    def server_hvp(self, group: Group, point: Weights, vector: Weights, *, batch_size: int | None, seed: int | None) -> Weights:
        return self.server_node.hvp(group, point, vector, seed, batch_size=batch_size)

    def _count(self, group: Group, clients: int, payload: int) -> None:
        """One contact with ``clients`` clients of ``group``: ``payload`` bytes each way per client."""
        self.comm.rounds[group] += 1
        self.comm.messages += clients
        self.comm.bytes_sent += payload * clients
        self.comm.bytes_received += payload * clients

    def argmin(
        self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance: float | None = None
    ) -> Solution:
        return self.server_node.argmin(linear, center, theta, seed, tolerance=tolerance)
