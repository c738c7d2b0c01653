"""Pieces the methods share: seeds drawn from a round's generator, what a method needs of the
federation, the sliding methods' full difference and their statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsweep.algorithms.protocols import GradientOracle, Group, Solution
from fedsweep.core.errors import ConfigError
from fedsweep.core.weights import Weights


def draw_seed(rng: np.random.Generator) -> int:
    """A minibatch/solver seed drawn from the round's generator."""
    return int(rng.integers(2**31 - 1))


def check_federation(method: object, groups: Sequence[Group], server_groups: Sequence[Group]) -> None:
    """One line, before any round, when the federation lacks what ``method`` needs: its
    ``needs_groups`` (client groups with these names) and ``needs_server`` (the server's own data
    for every group). Methods without these attributes need nothing."""
    name = getattr(method, "name", type(method).__name__)
    needed = getattr(method, "needs_groups", None)
    if needed is not None and tuple(groups) != tuple(needed):
        raise ConfigError(
            f"method={name} needs the client groups {', '.join(needed)}; the partition gives {', '.join(groups)} "
            "(use partition=classes, frequent_rare or groups_iid)"
        )
    missing = [g for g in groups if g not in server_groups]
    if getattr(method, "needs_server", False) and missing:
        raise ConfigError(
            f"method={name} needs the server's own data for every group; the partition gives none for "
            f"{', '.join(missing)} (set partition.server_fraction > 0, or use partition=classes)"
        )


def full_difference(oracle: GradientOracle, x: Weights) -> tuple[Weights, dict[Group, Weights]]:
    """One full communication at x: ``(∇h − ∇h1)(x) = Σ_G λ_G (∇G − ∇G1)(x)`` and the per-group
    ``(∇G − ∇G1)(x)``, exact (whole shards, all the server's data), also when the corrections use
    minibatches: a minibatch snapshot would persist through the round and bias every local step."""
    clients = oracle.full_communication([x])
    diffs = {}
    for group in oracle.groups:
        (server_grad,) = oracle.server(group, [x], None)
        diffs[group] = clients[group][0].sub_(server_grad)
    total = Weights.zeros_like(x)
    for group, diff in diffs.items():
        total.axpy_(oracle.group_weight(group), diff)
    return total, diffs


def solver_stats(solutions: list[Solution]) -> dict[str, float]:
    """The round's argmin solves: the objective at the last, the solver's steps in all and the
    worst residual (each within its tolerance, or the solve would have raised)."""
    return {
        "loss/argmin": solutions[-1].value,
        "argmin/steps": float(sum(s.steps for s in solutions)),
        "argmin/residual": max(s.residual for s in solutions),
    }


def difference_norms(extragrad: Weights, diffs: dict[Group, Weights]) -> dict[str, float]:
    return {"norm/extragrad/full": extragrad.norm().item(), **{f"norm/extragrad/{g}": d.norm().item() for g, d in diffs.items()}}
