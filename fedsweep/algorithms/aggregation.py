"""Aggregation weights as pure functions: what a weighted sum of client replies means.

A group G of K clients with n_i examples each (N in all) has the loss
G(x) = Σ_i (n_i / N) F_i(x), F_i the mean loss on client i's examples. The runtime
returns Σ_{i∈S} w_i · reply_i for a set S of clients; these functions give the w_i.
"""

from __future__ import annotations

import numpy as np


def group_weights(sizes: np.ndarray) -> np.ndarray:
    """w_i = n_i / N over the whole group: Σ_i w_i ∇F_i = ∇G exactly."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return sizes / sizes.sum()


def sampled_weights(sizes: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Weights for a uniform sample S of m of the K clients, drawn without replacement.

    w_i = (K / m) · n_i / N for i ∈ S (Horvitz–Thompson: each client is in S with
    probability m / K), so E_S[Σ_{i∈S} w_i ∇F_i(x)] = Σ_i (n_i / N) ∇F_i(x) = ∇G(x):
    the estimate is unbiased, whatever the client sizes. The weights need not sum to 1.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    return (len(sizes) / len(chosen)) * sizes[chosen] / sizes.sum()


def participation_weights(sizes: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """FedAvg's weights for the participating clients S: w_i = n_i / Σ_{j∈S} n_j.

    They sum to 1, so the average of client models stays a model (McMahan et al. 2017);
    with S the whole group they equal :func:`group_weights`.
    """
    chosen_sizes = np.asarray(sizes, dtype=np.float64)[chosen]
    return chosen_sizes / chosen_sizes.sum()


def sample_clients(rng: np.random.Generator, num_clients: int, share: float | int | None) -> np.ndarray | None:
    """A uniform sample of a group's clients without replacement, sorted; None for the whole group.

    ``share``: None (everyone), a fraction in (0, 1] (at least one client), or a count
    (capped at the group's size). A share that selects everyone draws nothing, so the
    method's random stream is the same as without sampling.
    """
    if share is None:
        return None
    m = max(1, round(share * num_clients)) if isinstance(share, float) else min(int(share), num_clients)
    if m >= num_clients:
        return None
    return np.sort(rng.choice(num_clients, size=m, replace=False))


def self_normalized(pi: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """McMahan et al.'s weights for the sampled clients S: w_i = π_i / Σ_{j∈S} π_j. They sum to
    1, so the average of client models stays a model; with S everyone they are π."""
    picked = np.asarray(pi, dtype=np.float64)[chosen]
    return picked / picked.sum()


def unbiased(pi: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Weights for a uniform sample S of M of the K clients: w_i = (K/M) π_i, so that
    E_S[Σ_{i∈S} w_i u_i] = Σ_i π_i u_i for any per-client u (the sampled average of updates is
    unbiased; Li et al. 2020, "On the convergence of FedAvg on non-IID data", scheme I). They need
    not sum to 1: apply them to updates y_i − x, not to models."""
    pi = np.asarray(pi, dtype=np.float64)
    return (len(pi) / len(chosen)) * pi[chosen]
