"""What a method is, and what it may ask of the federation: gradients and the server's argmin.

A method is a small object in the spirit of optax's ``GradientTransformation``:
``init(x0, seed=...)`` gives a state, ``round(state, oracle)`` returns the next state and
the round's statistics. Methods are plain code over the oracle protocol and ``Weights``;
they never see Ray, workers or data. ``fedsweep.federation.oracle.FederatedOracle``
implements the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from fedsweep.core.weights import Weights

Group = Literal["f", "g"]
GROUPS: tuple[Group, Group] = ("f", "g")


@dataclass(frozen=True)
class Solution:
    """An accepted solve: x⁺ (in the model's dtype), A(x⁺) − ⟨v, c⟩, the solver's steps and
    ρ(x⁺) ≤ its tolerance, both measured in float64 at the returned x⁺."""

    x: Weights
    value: float
    steps: int
    residual: float


class GradientOracle(Protocol):
    """Gradients of the group losses and the server's proximal solve.

    Every returned ``Weights`` is a fresh, writable result owned by the caller.
    ``subset`` picks clients of a group by position (0 .. ``num_clients(group)`` − 1);
    None contacts the whole group.
    """

    @property
    def deterministic(self) -> bool:
        """True when every gradient is a full-data mean (no minibatch noise)."""

    def num_clients(self, group: Group) -> int:
        """How many clients the group has."""

    def clients(
        self,
        group: Group,
        points: Sequence[Weights],
        seed: int | None,
        *,
        subset: np.ndarray | None = None,
        snapshot: Weights | None = None,
    ) -> list[Weights]:
        """∇G at each point (G = f or g: the mean loss over the group's examples), or with a
        ``snapshot`` ∇G(point) − ∇G(snapshot): the clients hold the snapshot since the round's
        full communication, so one vector travels each way per point.

        One communication with the group's clients (or ``subset`` of them: then an
        unbiased estimate, see ``fedsweep.algorithms.aggregation.sampled_weights``); all points
        and the snapshot use the same minibatches (drawn by ``seed``; ``None``: whole shards).
        """

    def full_communication(self, points: Sequence[Weights]) -> dict[Group, list[Weights]]:
        """``{"f": ∇f at each point, "g": ∇g at each point}``, exact: every client of both groups
        on its whole shard (one round trip; counted as one contact per group)."""

    def server(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        """∇G1 at each point: the server's f-like (G=f) or g-like (G=g) data, on the minibatch
        drawn by ``seed``; ``seed=None``: all of it (exact)."""

    def local_updates(
        self,
        x: Weights,
        *,
        epochs: int,
        lr: float,
        batch_size: int | None,
        seed: int,
        subsets: Mapping[Group, np.ndarray | None],
        prox: float = 0.0,
    ) -> dict[Group, Weights]:
        """For each group of ``subsets``: its clients (the subset, or all for None) run
        ``epochs`` of SGD from x on F_i(w) + (prox/2)‖w − x‖², and the example-weighted mean
        of their models (``fedsweep.algorithms.aggregation.participation_weights``). One round trip."""

    def local_runs(
        self,
        x: Weights,
        *,
        epochs: int,
        lr: float,
        batch_size: int | None,
        seed: int,
        subsets: Mapping[Group, np.ndarray | None],
        drift: Mapping[Group, Weights],
    ) -> dict[Group, tuple[Weights, Weights]]:
        """For each group of ``subsets``, its contacted clients' own ``(models, mean gradients)``,
        stacked (row r: the r-th contacted client): ``epochs`` of SGD from x on F_i(w) + ⟨d_i, w⟩,
        where ``drift[group]`` stacks the d_i the same way, and the mean of the minibatch
        gradients ∇F_i it took. One round trip; SCAFFOLD's client step."""

    def client_sizes(self, group: Group) -> np.ndarray:
        """Each client's number of examples, n_i (what FedAvg-style weights are made of)."""

    def argmin(
        self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance: float | None = None
    ) -> Solution:
        """``argmin_x ⟨linear, x⟩ + ‖x − center‖²/(2θ) + h1(x)``, accepted only when θ‖∇A(x⁺)‖ ≤
        tolerance·‖x⁺ − center‖ (measured in float64; ``tolerance`` None: the configured one);
        raises ``SolverError`` when the solver cannot get there."""


@dataclass
class MethodState:
    x: Weights  # the current iterate x_t
    rng: np.random.Generator  # every random draw of the method (groups, K, minibatch seeds)
    round: int = 0
    extra: dict[str, Weights] = field(default_factory=dict)
    """What else the method carries from round to round (SCAFFOLD's control variates);
    tensors only, saved in checkpoints with x."""


class Method(Protocol):
    name: str

    def init(self, x0: Weights, *, seed: int) -> MethodState: ...

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]: ...

