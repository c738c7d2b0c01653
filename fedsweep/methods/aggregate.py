"""Aggregation of client replies as pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from fedsweep.weights import Weights


def weighted_mean(replies: Sequence[Weights], sizes: Sequence[int]) -> Weights:
    """Σ_i (n_i / N) w_i: the mean over all examples when each w_i is a mean over n_i examples.

    Summed in the order given, so the result does not depend on which runtime
    produced the replies.
    """
    if len(replies) != len(sizes) or not replies:
        raise ValueError(f"need one size per reply, got {len(replies)} replies and {len(sizes)} sizes")
    total = float(sum(sizes))
    out = replies[0] * (sizes[0] / total)
    for reply, n in zip(replies[1:], sizes[1:]):
        out.axpy_(n / total, reply)
    return out
