"""Pieces the methods share: shares of clients, seeds drawn from a method's generator, the
sliding methods' full difference and their statistics."""

from __future__ import annotations

import numpy as np

from fedsweep.core.errors import ConfigError
from fedsweep.algorithms.protocols import GROUPS, GradientOracle, Group, Solution
from fedsweep.core.weights import Weights


def check_share(key: str, share: object) -> None:
    """A share of a group's clients: None (all), a fraction in (0, 1] or a count >= 1."""
    if share is None:
        return
    if isinstance(share, bool) or not isinstance(share, (int, float)):
        raise ConfigError(f"{key} must be null, a fraction in (0, 1] or a count >= 1, got {key}={share!r}")
    if isinstance(share, float) and not 0 < share <= 1:
        raise ConfigError(f"{key} as a fraction must be in (0, 1], got {key}={share}")
    if isinstance(share, int) and share < 1:
        raise ConfigError(f"{key} as a count must be >= 1, got {key}={share}")


def draw_seed(rng: np.random.Generator) -> int:
    """A minibatch/solver seed drawn from the method's generator."""
    return int(rng.integers(2**31 - 1))


def full_difference(oracle: GradientOracle, x: Weights) -> tuple[Weights, dict[Group, Weights]]:
    """One full communication at x: ``(∇h − ∇h1)(x)`` and the per-group ``(∇G − ∇G1)(x)``,
    exact (whole shards, all the server's data), also when the corrections use minibatches:
    a minibatch snapshot would persist through the round and bias every local step."""
    clients = oracle.full_communication([x])
    diffs = {}
    for group in GROUPS:
        (server_grad,) = oracle.server(group, [x], None)
        diffs[group] = clients[group][0].sub_(server_grad)
    return Weights.add(diffs["f"], diffs["g"]).mul_(0.5), diffs


def solver_stats(solutions: list[Solution]) -> dict[str, float]:
    """The round's argmin solves: the objective at the last, the solver's steps in all and the
    worst residual (each within its tolerance, or the solve would have raised)."""
    return {
        "loss/argmin": solutions[-1].value,
        "argmin/steps": float(sum(s.steps for s in solutions)),
        "argmin/residual": max(s.residual for s in solutions),
    }


def difference_norms(extragrad: Weights, diffs: dict[Group, Weights]) -> dict[str, float]:
    return {
        "norm/extragrad/full": extragrad.norm().item(),
        "norm/extragrad/f": diffs["f"].norm().item(),
        "norm/extragrad/g": diffs["g"].norm().item(),
    }
