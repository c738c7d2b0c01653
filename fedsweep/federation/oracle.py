"""The federation seen as a gradient oracle: a runtime's clients plus the server.

Implements ``fedsweep.algorithms.protocols.GradientOracle``. It turns a method's question
("∇f at these points", "these clients' replies to this program") into one request to the
runtime with the right aggregation weights (``fedsweep.algorithms.aggregation``), brings the
float64 sums back to the server's device and dtype, and counts the logical federation's
communication: contacts per group, client messages, and bytes as if every contacted client
received the request and sent its own reply, however many workers served them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsweep.algorithms.aggregation import group_weights, sampled_weights
from fedsweep.algorithms.programs import ClientProgram
from fedsweep.algorithms.protocols import Group, Solution
from fedsweep.core.weights import Weights
from fedsweep.federation.client_data import ClientLayout
from fedsweep.federation.requests import SCALAR, GradRequest, HvpRequest, Reply, Request, TrainRequest
from fedsweep.federation.runtime.base import Runtime
from fedsweep.federation.server import Server


@dataclass
class CommStats:
    """Cumulative communication: contacts per group, client messages and bytes (both ways).

    A contact is one request to the contacted clients of a group and their replies.
    """

    rounds: dict[str, int] = field(default_factory=dict)
    messages: int = 0  # client replies (one per contacted client per contact)
    bytes_sent: int = 0
    bytes_received: int = 0

    def as_metrics(self) -> dict[str, float]:
        return {
            **{f"comm/{group}": float(n) for group, n in self.rounds.items()},
            "comm/total": float(sum(self.rounds.values())),
            "comm/messages": float(self.messages),
            "comm/bytes_sent": float(self.bytes_sent),
            "comm/bytes_received": float(self.bytes_received),
        }


class FederatedOracle:
    def __init__(
        self,
        runtime: Runtime,
        clients: ClientLayout,
        server: Server,
        *,
        group_weights: Mapping[Group, float],
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
        self._data = clients
        self._lambda = dict(group_weights)
        self._sizes = clients.sizes
        self._pi = np.zeros(clients.num_clients)
        for group in clients.groups:
            ids = clients.group(group)
            self._pi[ids] = self._lambda[group] * self._sizes[ids] / self._sizes[ids].sum()
        self.comm = CommStats(rounds=dict.fromkeys(clients.groups, 0))

    # -- what the federation is -------------------------------------------------------------

    @property
    def groups(self) -> tuple[Group, ...]:
        return tuple(self._data.groups)

    @property
    def server_groups(self) -> tuple[Group, ...]:
        return tuple(self.server_node.data)

    @property
    def deterministic(self) -> bool:
        return self._deterministic

    def group_weight(self, group: Group) -> float:
        return self._lambda[group]

    def clients(self, group: Group | None = None) -> np.ndarray:
        return np.arange(self._data.num_clients) if group is None else self._data.group(group)

    def client_sizes(self) -> np.ndarray:
        return self._sizes.copy()

    def objective_weights(self) -> np.ndarray:
        return self._pi.copy()

    # -- gradients ------------------------------------------------------------------------

    def group_gradients(
        self,
        group: Group,
        points: Sequence[Weights],
        seed: int | None,
        *,
        subset: np.ndarray | None = None,
        snapshot: Weights | None = None,
    ) -> list[Weights]:
        ids, sizes = self._data.group(group), self._sizes[self._data.group(group)]
        if subset is None:
            parts = {group: (ids, group_weights(sizes))}
        else:
            parts = {group: (ids[subset], sampled_weights(sizes, subset))}
        return self._gradients(parts, points, seed, snapshot)[group]

    def full_communication(self, points: Sequence[Weights]) -> dict[Group, list[Weights]]:
        parts = {g: (self._data.group(g), group_weights(self._sizes[self._data.group(g)])) for g in self.groups}
        return self._gradients(parts, points, None, None)

    def gradients(
        self, points: Sequence[Weights], *, clients: np.ndarray, weights: np.ndarray, seed: int | None
    ) -> list[Weights]:
        clients, weights = np.asarray(clients, dtype=np.int64), np.asarray(weights, dtype=np.float64)
        owner = self._data.group_of(clients)
        parts = {g: (clients[owner == k], weights[owner == k]) for k, g in enumerate(self.groups) if (owner == k).any()}
        sums = self._gradients(parts, points, seed, None)
        out = [Weights.zeros_like(p).to(self.device, self.dtype) for p in points]
        for group_sums in sums.values():
            for total, part in zip(out, group_sums):
                total.add_(part)
        return out

    def _gradients(self, parts, points, seed, snapshot) -> dict[Group, list[Weights]]:
        """∇ at each point (minus at ``snapshot``) for every group's part, one round trip."""
        request = GradRequest(tuple(points), None if seed is None else self.batch_size, seed, snapshot)
        replies = self._request(request, parts, sent=request.nbytes, received=request.nbytes)
        return {group: [reply[str(k)] for k in range(len(points))] for group, reply in replies.items()}

    # -- local training -------------------------------------------------------------------

    def train(
        self,
        program: ClientProgram,
        x: Weights,
        *,
        clients: np.ndarray,
        weights: np.ndarray,
        seed: int,
        shared: Mapping[str, Weights] | None = None,
        rows: Mapping[str, Weights] | None = None,
    ) -> dict[str, Weights | float]:
        clients, weights = np.asarray(clients, dtype=np.int64), np.asarray(weights, dtype=np.float64)
        request = self._train_request(program, x, clients, seed, shared, rows)
        owner = self._data.group_of(clients)
        parts = {g: (clients[owner == k], weights[owner == k]) for k, g in enumerate(self.groups) if (owner == k).any()}
        replies = self._request(request, parts, sent=request.nbytes, received=None)
        total: dict[str, Weights | float] = {}
        for reply in replies.values():
            for name, value in reply.items():
                if name in total:
                    total[name] = total[name] + value if isinstance(value, float) else total[name].add_(value)
                else:
                    total[name] = value if isinstance(value, float) else value.clone()
        return total

    def train_each(
        self,
        program: ClientProgram,
        x: Weights,
        *,
        clients: np.ndarray,
        seed: int,
        shared: Mapping[str, Weights] | None = None,
        rows: Mapping[str, Weights] | None = None,
    ) -> dict[str, Weights]:
        clients = np.asarray(clients, dtype=np.int64)
        request = self._train_request(program, x, clients, seed, shared, rows)
        replies = self.runtime.each(request, clients)
        owner = self._data.group_of(clients)
        for k, group in enumerate(self.groups):
            if (owner == k).any():
                self._count(group, int((owner == k).sum()), request.nbytes, _reply_bytes(replies, x))
        return {name: value.to(self.device, self.dtype) for name, value in replies.items()}

    def _train_request(self, program, x, clients, seed, shared, rows) -> TrainRequest:
        rows = {k: w.detach().cpu() if w.device.type != "cpu" else w for k, w in (rows or {}).items()}
        return TrainRequest(program, x, seed, dict(shared or {}), rows, tuple(clients.tolist()) if rows else ())

    def _request(self, request: Request, parts, *, sent: int, received: int | None) -> dict[Group, dict]:
        """One round trip to every group's part; the sums back on the server's device and dtype
        (numbers as floats), the communication counted per group (``received`` None: the bytes of
        the reply's vectors)."""
        sums: list[Reply] = self.runtime.map_reduce(request, [part for part in parts.values()])
        out = {}
        for (group, (ids, _)), reply in zip(parts.items(), sums):
            back = received if received is not None else _reply_bytes(reply, request.vectors[0])
            self._count(group, len(ids), sent, back)
            out[group] = {
                name: float(value[SCALAR]) if value.names == (SCALAR,) else value.to(self.device, self.dtype)
                for name, value in reply.items()
            }
        return out

    def _count(self, group: Group, clients: int, sent: int, received: int) -> None:
        """One contact with ``clients`` clients of ``group``: bytes per client each way."""
        self.comm.rounds[group] += 1
        self.comm.messages += clients
        self.comm.bytes_sent += sent * clients
        self.comm.bytes_received += received * clients

    # -- the server -----------------------------------------------------------------------

    def server(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        return self.server_node.grads(group, points, seed)

    def argmin(
        self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance: float | None = None
    ) -> Solution:
        return self.server_node.argmin(linear, center, theta, seed, tolerance=tolerance)

    # -- diagnostics (not counted in ``comm``, which measures the methods) --------------------

    def client_hvp(self, group: Group, point: Weights, vector: Weights, *, batch_size: int | None, seed: int | None) -> Weights:
        """∇²G(point) · vector (``batch_size`` None: whole shards, exact)."""
        ids = self._data.group(group)
        (reply,) = self.runtime.map_reduce(HvpRequest(point, vector, batch_size, seed), [(ids, group_weights(self._sizes[ids]))])
        return reply["hvp"].to(self.device, self.dtype)

    def server_hvp(self, group: Group, point: Weights, vector: Weights, *, batch_size: int | None, seed: int | None) -> Weights:
        return self.server_node.hvp(group, point, vector, seed, batch_size=batch_size)


def _reply_bytes(reply: Mapping[str, Weights], like: Weights) -> int:
    """Bytes one client sends back: each vector field in the model's dtype, each number as 8."""
    vectors = sum(1 for w in reply.values() if w.names != (SCALAR,))
    numbers = len(reply) - vectors
    return vectors * like.numel * like.dtype.itemsize + 8 * numbers
