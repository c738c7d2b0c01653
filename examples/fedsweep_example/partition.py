"""A partition by feature: group g holds the inputs with the largest first coordinate (a rare
region of input space), group f the rest; the server keeps a share of each."""

from __future__ import annotations

import torch

from fedsweep.task import Dataset, Partition
from fedsweep.core.errors import ConfigError


def by_feature(
    train: Dataset,
    *,
    num_classes: int,
    seed: int = 0,
    g_fraction: float = 0.2,
    server_fraction: float = 0.1,
    clients_f: int = 4,
    clients_g: int = 4,
) -> Partition:
    """fedsweep passes ``train``, ``num_classes`` (unused here) and ``seed``."""
    if not 0 < g_fraction < 1:
        raise ConfigError(f"partition.g_fraction must be in (0, 1), got partition.g_fraction={g_fraction!r}")
    if not 0 < server_fraction < 1:
        raise ConfigError(f"partition.server_fraction must be in (0, 1), got {server_fraction!r}")
    order = torch.argsort(train.x[:, 0], descending=True)
    n_g = max(int(len(order) * g_fraction), clients_g + 1)
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for idx, clients in ((order[n_g:], clients_f), (order[:n_g], clients_g)):
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_server = max(1, int(len(idx) * server_fraction))
        if len(idx) - n_server < clients:
            raise ConfigError(f"too few examples for {clients} clients in a group of {len(idx)}")
        shards = torch.tensor_split(idx[n_server:], clients)
        groups.append((train.subset(idx[:n_server]), tuple(train.subset(s) for s in shards)))
    (server_f, shards_f), (server_g, shards_g) = groups
    return Partition(clients={"f": shards_f, "g": shards_g}, server={"f": server_f, "g": server_g}, weights={"f": 0.5, "g": 0.5})
