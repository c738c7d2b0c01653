"""How a runtime with several servers (a pool's workers, the in-process runtime's threads) splits
a request's clients and adds their partial sums, so that every such runtime gives the numbers
of any other with the same number of servers, whatever finishes first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from fedsweep.core.weights import Weights
from fedsweep.federation.requests import Reply
from fedsweep.federation.runtime.base import Part


def split(sizes: np.ndarray, parts: int) -> list[slice]:
    """At most ``parts`` contiguous, non-empty slices of clients with about equal examples."""
    cumulative = np.cumsum(sizes)
    targets = cumulative[-1] * np.arange(1, parts) / parts
    cuts = np.unique(np.concatenate([[0], np.searchsorted(cumulative, targets, side="right"), [len(sizes)]]))
    return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def shares(parts: Sequence[Part], sizes: np.ndarray, servers: int) -> list[list[Part]]:
    """The clients of all ``parts`` (both groups of a full communication) in at most ``servers``
    contiguous shares balanced by examples (``sizes``: every client's); a share holds, for each
    part, its clients there and their weights (possibly none)."""
    clients = [np.asarray(c, dtype=np.int64) for c, _ in parts]
    weights = [np.asarray(w, dtype=np.float64) for _, w in parts]
    owner = np.repeat(np.arange(len(parts)), [len(c) for c in clients])
    every, every_weight = np.concatenate(clients), np.concatenate(weights)
    return [
        [(every[share][owner[share] == k], every_weight[share][owner[share] == k]) for k in range(len(parts))]
        for share in split(sizes[every], servers)
    ]


def add_in_order(partials: Iterable[Sequence[Reply | None]], parts: int) -> list[Reply]:
    """Per part, the float64 sum of the servers' partial sums (None: no client of that part
    there), added in server order."""
    totals: list[Reply] = [{} for _ in range(parts)]
    for reply in partials:
        for k, partial in enumerate(reply):
            for name, value in (partial or {}).items():
                if name in totals[k]:
                    totals[k][name].add_(value)
                else:  # a fresh float64 copy: a pool's replies are read-only views of the object store
                    totals[k][name] = Weights.zeros_like(value, dtype=torch.float64).add_(value)
    return totals


def joined(replies: Sequence[Reply]) -> Reply:
    """Every client's own reply, stacked in server order (``Runtime.each``)."""
    return {
        field: Weights({n: torch.cat([r[field][n] for r in replies]) for n in replies[0][field].names})
        for field in replies[0]
    }
