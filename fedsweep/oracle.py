"""The federation seen as a gradient oracle: a runtime's clients plus the server.

Implements ``fedsweep.methods.oracle.GradientOracle``. It aggregates client
replies (example-weighted means), moves them to the server's device and counts
what crosses the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fedsweep.methods.aggregate import weighted_mean
from fedsweep.methods.oracle import Group
from fedsweep.runtime.base import Runtime
from fedsweep.server import Server
from fedsweep.weights import Weights


@dataclass
class CommStats:
    """Cumulative communication: group contacts and bytes (float32 payloads, both ways).

    A contact is one request to every client of a group and their replies.
    """

    rounds: dict[str, int] = field(default_factory=lambda: {"f": 0, "g": 0})
    bytes_sent: int = 0
    bytes_received: int = 0

    def as_metrics(self) -> dict[str, float]:
        return {
            "comm/f": float(self.rounds["f"]),
            "comm/g": float(self.rounds["g"]),
            "comm/total": float(self.rounds["f"] + self.rounds["g"]),
            "comm/bytes_sent": float(self.bytes_sent),
            "comm/bytes_received": float(self.bytes_received),
        }


class FederatedOracle:
    def __init__(self, runtime: Runtime, server: Server, *, deterministic: bool, device: torch.device) -> None:
        self.runtime = runtime
        self.server_node = server
        self._deterministic = deterministic
        self.device = device
        self.comm = CommStats()
        self._sizes = {g: runtime.sizes(g) for g in ("f", "g")}

    @property
    def deterministic(self) -> bool:
        return self._deterministic

    def clients(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        replies = self.runtime.gather_grads(group, points, seed)
        sizes = self._sizes[group]
        self._count(group, sum(p.numel * p.dtype.itemsize for p in points))
        return [
            weighted_mean([reply[i] for reply in replies], sizes).to(self.device) for i in range(len(points))
        ]

    def local_updates(
        self, group: Group, x: Weights, *, epochs: int, lr: float, batch_size: int | None, seed: int
    ) -> Weights:
        models = self.runtime.gather_updates(group, x, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
        self._count(group, x.numel * x.dtype.itemsize)
        return weighted_mean(models, self._sizes[group]).to(self.device)

    def server(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        return self.server_node.grads(group, points, seed)

    def client_hvp(self, group: Group, point: Weights, vector: Weights, seed: int | None) -> Weights:
        """∇²G(point) · vector. A diagnostic: not counted in ``comm``, which measures the methods."""
        return weighted_mean(self.runtime.gather_hvps(group, point, vector, seed), self._sizes[group]).to(self.device)

    def server_hvp(self, group: Group, point: Weights, vector: Weights, seed: int | None) -> Weights:
        return self.server_node.hvp(group, point, vector, seed)

    def _count(self, group: Group, payload: int) -> None:
        """One contact with every client of ``group``: ``payload`` bytes each way per client."""
        clients = len(self._sizes[group])
        self.comm.rounds[group] += 1
        self.comm.bytes_sent += payload * clients
        self.comm.bytes_received += payload * clients

    def argmin(self, linear: Weights, center: Weights, theta: float, seed: int) -> tuple[Weights, float]:
        return self.server_node.argmin(linear, center, theta, seed)
