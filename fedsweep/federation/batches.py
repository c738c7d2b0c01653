"""Which examples each client uses in a request, drawn for many clients at once.

Every draw comes from keys: one uniform number per example of the whole federation,
``keys = PCG64(seed).random(N)``. A client's minibatch is its ``b`` examples with the
smallest keys; an epoch visits its examples in increasing key order. So a client's
examples depend only on the seed and the client, never on which worker serves it or
on which other clients share the request, and no per-client generator is needed:
1,000 clients cost a few numpy calls, not 1,000.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def example_keys(num_examples: int, seed: int | None, *, stream: int = 0) -> np.ndarray:
    """One uniform key per example of the federation, from ``(seed, stream)``."""
    seq = np.random.SeedSequence([0 if seed is None else int(seed), stream])
    return np.random.Generator(np.random.PCG64(seq)).random(num_examples)


def client_rows(starts: np.ndarray, clients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, owner)``: the rows of ``clients`` concatenated in order, and for each row
    the position of its client in ``clients``."""
    lo, sizes = starts[clients], starts[clients + 1] - starts[clients]
    owner = np.repeat(np.arange(len(clients)), sizes)
    offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return lo[owner] + offsets, owner


def _ranked(starts: np.ndarray, clients: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, owner, rank)`` with each client's rows in increasing key order and ``rank``
    the position of a row inside its client's order."""
    rows, owner = client_rows(starts, clients)
    order = np.lexsort((keys[rows], owner))  # by client, then by key
    rows, owner = rows[order], owner[order]
    sizes = starts[clients + 1] - starts[clients]
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return rows, owner, rank


@dataclass(frozen=True)
class Selection:
    """The rows used by a request's clients: ``rows[j]`` belongs to client ``owner[j]``
    (a position in the request's client list), which uses ``counts[owner[j]]`` rows."""

    rows: np.ndarray
    owner: np.ndarray
    counts: np.ndarray


def minibatches(starts: np.ndarray, clients: np.ndarray, batch_size: int | None, seed: int | None) -> Selection:
    """Each client's minibatch: all its rows when ``batch_size`` is None or at least its size,
    else ``batch_size`` rows drawn without replacement by ``seed``; in storage order."""
    sizes = starts[clients + 1] - starts[clients]
    counts = sizes if batch_size is None else np.minimum(sizes, batch_size)
    if batch_size is None or (sizes <= batch_size).all():
        rows, owner = client_rows(starts, clients)
        return Selection(rows, owner, counts)
    rows, owner, rank = _ranked(starts, clients, example_keys(int(starts[-1]), seed))
    keep = rank < counts[owner]
    rows, owner = rows[keep], owner[keep]
    order = np.lexsort((rows, owner))  # each client's rows in storage order, as when it keeps them all
    return Selection(rows[order], owner[order], counts)


def epoch_order(starts: np.ndarray, clients: np.ndarray, seed: int | None, epoch: int) -> np.ndarray:
    """Each client's rows in this epoch's visiting order, one row of a padded matrix
    ``(len(clients), max size)``; the padding repeats the client's first row."""
    sizes = starts[clients + 1] - starts[clients]
    rows, owner, rank = _ranked(starts, clients, example_keys(int(starts[-1]), seed, stream=1 + epoch))
    order = np.repeat(starts[clients][:, None], max(int(sizes.max()), 1), axis=1)
    order[owner, rank] = rows
    return order
