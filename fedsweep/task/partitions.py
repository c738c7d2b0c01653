"""A federation's data: named client groups, each group's weight, the server's own data.

A `Partition` is named client groups, each a tuple of client shards; each group G's weight
λ_G in the objective Σ_G λ_G f_G; and, optionally, the server's own data for some groups.
A partition component (named by a config's ``_target_``, called as
``target(train, *, num_classes, seed, **keys)``) returns one; VRCS's two-group federation is
`fedsweep.task.vrcs_partitions.make_partition`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fedsweep.core.checks import is_number
from fedsweep.core.errors import ConfigError
from fedsweep.task.datasets import Dataset


@dataclass(frozen=True, eq=False)
class Partition:
    """A federation's data: named client groups (each a tuple of client shards), each group's
    weight in the objective, and the server's own data for some groups (optional)."""

    clients: Mapping[str, tuple[Dataset, ...]]  # group name -> its clients' shards; groups in order
    server: Mapping[str, Dataset] = field(default_factory=dict)  # server data per group (keys ⊆ clients'); empty = none
    weights: Mapping[str, float] | None = None  # λ_G > 0 summing to 1; None = by examples, λ_G = n_G / N

    def __post_init__(self) -> None:
        clients = {name: tuple(shards) for name, shards in self.clients.items()}
        server, groups = dict(self.server), list(clients)
        if not clients:
            raise ConfigError("a Partition needs at least one client group, got clients={}")
        for name, shards in clients.items():
            if not (isinstance(name, str) and name):
                raise ConfigError(f"group names must be non-empty strings, got {name!r}")
            sizes = [len(s) for s in shards]
            if not sizes or min(sizes) == 0:
                raise ConfigError(f"group {name!r} needs clients with examples, got sizes {sizes}")
        if unknown := set(server) - set(clients):
            raise ConfigError(f"server data for {sorted(map(str, unknown))} names no client group; groups: {groups}")
        if any(len(d) == 0 for d in server.values()):
            raise ConfigError(f"server data must not be empty, got sizes { {g: len(d) for g, d in server.items()} }")
        if self.weights is not None:
            weights = dict(self.weights)
            if set(weights) != set(clients):
                raise ConfigError(f"weights must have one entry per group {groups}, got {sorted(map(str, weights))}")
            if not all(is_number(w) and w > 0 for w in weights.values()) or abs(sum(weights.values()) - 1) > 1e-9:
                raise ConfigError(f"weights must be finite, > 0 and sum to 1, got weights={weights}")
            object.__setattr__(self, "weights", {name: weights[name] for name in groups})
        object.__setattr__(self, "clients", clients)
        object.__setattr__(self, "server", server)

    def group_weights(self) -> dict[str, float]:
        """λ_G per group: ``weights`` when given, else n_G / N with n_G the examples of G's
        clients (the server's data does not count)."""
        if self.weights is not None:
            return dict(self.weights)
        sizes = {name: sum(len(s) for s in shards) for name, shards in self.clients.items()}
        total = sum(sizes.values())
        return {name: n / total for name, n in sizes.items()}

    def describe(self) -> str:
        """Sizes and class counts of every group and server part, one line each."""
        parts = [s for shards in self.clients.values() for s in shards] + list(self.server.values())
        labelled = all(p.y.dim() == 1 and not torch.is_floating_point(p.y) for p in parts)
        n_labels = 1 + max(int(p.y.max()) for p in parts) if labelled else 0

        def counts(ds: tuple[Dataset, ...]) -> str:
            if not labelled:
                return ""
            return f", class counts {torch.bincount(torch.cat([d.y for d in ds]), minlength=n_labels).tolist()}"

        lines, weights = [], self.group_weights()
        for name, shards in self.clients.items():
            sizes = [len(s) for s in shards]
            lines.append(
                f"group {name}: {len(shards)} clients, sizes {min(sizes)}-{max(sizes)}, total {sum(sizes)}, "
                f"weight {weights[name]:.4g}{counts(shards)}"
            )
        lines += [f"server {name}: {len(d)} examples{counts((d,))}" for name, d in self.server.items()]
        return "\n".join(lines)

