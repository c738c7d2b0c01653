"""How similar each client group is to the server: δ_G = ‖∇²G(x) − ∇²G1(x)‖₂.

The sliding methods contract when θ is of order 1/δ (δ bounds the Hessian
difference between h and h1), so measuring δ_f and δ_g at the starting point
lets a user pick θ from data. Estimated by power iteration on Hessian-vector
products (each iteration: one HVP request to the group, one on the server), reading
‖A v‖ rather than the Rayleigh quotient, since A = ∇²G − ∇²G1 is indefinite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from fedsweep.algorithms.protocols import Group
from fedsweep.core.weights import Weights


class HessianOracle(Protocol):
    @property
    def server_groups(self) -> tuple[Group, ...]: ...

    def client_hvp(self, group: Group, point: Weights, vector: Weights, *, batch_size: int | None, seed: int | None) -> Weights: ...

    def server_hvp(self, group: Group, point: Weights, vector: Weights, *, batch_size: int | None, seed: int | None) -> Weights: ...


def power_iteration(matvec: Callable[[Weights], Weights], v0: Weights, iterations: int) -> float:
    """‖A‖₂ of a symmetric operator A, from ``iterations`` products: ‖A v‖ for the unit iterate v.

    ‖A v‖, not the Rayleigh quotient |vᵀA v|: on an indefinite A whose extreme eigenvalues are
    ±λ the iterate keeps a mix of both eigenvectors, where vᵀA v can be anything in [−λ, λ]
    but ‖A v‖ is λ. For any start, ‖A v‖ ≤ ‖A‖₂ and it rises to it.
    """
    v = v0 / v0.norm()
    estimate = 0.0
    for _ in range(iterations):
        w = matvec(v)
        norm = w.norm()
        estimate = norm.item()
        if estimate == 0.0:
            return 0.0
        v = w / norm
    return estimate


def random_like(x: Weights, seed: int) -> Weights:
    gen = torch.Generator().manual_seed(seed)
    v = Weights.zeros_like(x)
    for t in v.tensors:  # one-off initialisation, not a hot path
        t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
    return v


def estimate_similarity(
    oracle: HessianOracle, x: Weights, *, iterations: int, seed: int, batch_size: int | None = None
) -> dict[str, float]:
    """``{"similarity/delta_<G>": δ_G}`` at x for every group the server holds data of: from exact Hessians (whole
    shards, all the server's data) when ``batch_size`` is None, else from minibatch Hessians, the
    same minibatch throughout (drawn by ``seed``), which overstate δ by their own noise."""
    out = {}
    for group in oracle.server_groups:

        def matvec(v: Weights, group: Group = group) -> Weights:
            client = oracle.client_hvp(group, x, v, batch_size=batch_size, seed=seed)
            return client.sub_(oracle.server_hvp(group, x, v, batch_size=batch_size, seed=seed))

        out[f"similarity/delta_{group}"] = power_iteration(matvec, random_like(x, seed), iterations)
    return out
