"""What a method is, and what it may ask of the federation.

A method is a small object in the spirit of optax's ``GradientTransformation``:
``init(x0, *, seed, oracle)`` gives a state, ``round(state, oracle)`` returns the next state and the
round's statistics. States are values: frozen dataclasses of tensors (``Weights``), numbers and
mappings of them, replaced rather than mutated, with no random generator inside: a round's
draws come from ``state.rng()``, keyed by ``(seed, round)``. So any method's state is
checkpointed and restored without the checkpoint knowing its fields.

Methods are plain code over the oracle protocol and ``Weights``; they never see Ray, workers
or data. ``fedsweep.federation.oracle.FederatedOracle`` implements the protocol.

The federation: K clients with ids 0 … K − 1 in named groups (one group, ``"clients"``, in
standard FL; ``"f"`` and ``"g"`` in VRCS's), client i holding n_i examples with mean loss F_i.
Group G's loss is G = Σ_{i∈G} (n_i/n_G) F_i, the objective h = Σ_G λ_G G = Σ_i π_i F_i with
π_i = λ_G n_i / n_G. The server may hold data of its own for some groups (G1, h1 = Σ λ_G G1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from fedsweep.core.weights import Weights

if TYPE_CHECKING:
    from fedsweep.algorithms.programs import ClientProgram

Group = str


@dataclass(frozen=True)
class Solution:
    """An accepted solve: x⁺ (in the model's dtype), A(x⁺) − ⟨v, c⟩, the solver's steps and
    ρ(x⁺) ≤ its tolerance, both measured in float64 at the returned x⁺."""

    x: Weights
    value: float
    steps: int
    residual: float


class GradientOracle(Protocol):
    """The federation as a method sees it. Every returned ``Weights`` is a fresh, writable result
    owned by the caller. Client ids index ``client_sizes()``; a group's clients are contiguous."""

    @property
    def groups(self) -> tuple[Group, ...]:
        """The client groups' names, in order."""

    @property
    def server_groups(self) -> tuple[Group, ...]:
        """The groups the server holds data of (may be empty)."""

    @property
    def deterministic(self) -> bool:
        """True when every gradient is a full-data mean (no minibatch noise)."""

    def group_weight(self, group: Group) -> float:
        """λ_G, the group's weight in the objective."""

    def clients(self, group: Group | None = None) -> np.ndarray:
        """The ids of a group's clients (every client's with None)."""

    def client_sizes(self) -> np.ndarray:
        """n_i of every client, by id."""

    def objective_weights(self) -> np.ndarray:
        """π_i of every client, by id: h = Σ_i π_i F_i (they sum to 1)."""

    def group_gradients(
        self,
        group: Group,
        points: Sequence[Weights],
        seed: int | None,
        *,
        subset: np.ndarray | None = None,
        snapshot: Weights | None = None,
    ) -> list[Weights]:
        """∇G at each point, or with a ``snapshot`` ∇G(point) − ∇G(snapshot) (the clients hold the
        snapshot since the round's full communication, so one vector travels each way per point).
        One contact with the group's clients, or with ``subset`` of them (positions in
        ``clients(group)``: then the unbiased estimate of ``aggregation.sampled_weights``); all
        points and the snapshot on the same minibatches (drawn by ``seed``; None: whole shards)."""

    def gradients(
        self, points: Sequence[Weights], *, clients: np.ndarray, weights: np.ndarray, seed: int | None
    ) -> list[Weights]:
        """Σ_i weights[i] ∇F_{clients[i]} at each point (one contact with each group touched)."""

    def full_communication(self, points: Sequence[Weights]) -> dict[Group, list[Weights]]:
        """∇G at each point for every group, exact: every client on its whole shard (one round
        trip; counted as one contact per group)."""

    def server(self, group: Group, points: Sequence[Weights], seed: int | None) -> list[Weights]:
        """∇G1 at each point on the server's data of ``group``: the minibatch drawn by ``seed``,
        all of it with None (exact)."""

    def train(
        self,
        program: ClientProgram,
        x: Weights,
        *,
        clients: np.ndarray,
        weights: np.ndarray,
        seed: int,
        shared: Mapping[str, Weights] | None = None,
        rows: Mapping[str, Weights] | None = None,
    ) -> dict[str, Weights | float]:
        """Every client of ``clients`` runs ``program`` from x (minibatches drawn by ``seed``);
        for every field of the program's reply, Σ_i weights[i] · reply_i (vectors as ``Weights``,
        numbers as floats). ``shared``: other vectors every client receives; ``rows``: per-client
        vectors stacked in ``clients``' order. One round trip."""

    def train_each(
        self,
        program: ClientProgram,
        x: Weights,
        *,
        clients: np.ndarray,
        seed: int,
        shared: Mapping[str, Weights] | None = None,
        rows: Mapping[str, Weights] | None = None,
    ) -> dict[str, Weights]:
        """As :meth:`train`, but each client's own reply, stacked in ``clients``' order (numbers as
        a ``Weights`` of one vector named ``value``): for methods that keep state per client."""

    def argmin(
        self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance: float | None = None
    ) -> Solution:
        """``argmin_x ⟨linear, x⟩ + ‖x − center‖²/(2θ) + h1(x)``, accepted only when θ‖∇A(x⁺)‖ ≤
        tolerance·‖x⁺ − center‖ (measured in float64; ``tolerance`` None: the configured one);
        raises ``SolverError`` when the solver cannot get there."""


S = TypeVar("S", bound="MethodState")


@dataclass(frozen=True)
class MethodState:
    """A method's state: the iterate, the round and the seed its draws are keyed by. Methods
    that carry more subclass it (frozen dataclasses of ``Weights``, numbers and mappings)."""

    x: Weights
    round: int = 0
    seed: int = 0

    def rng(self) -> np.random.Generator:
        """This round's random draws: a generator keyed by ``(seed, round)``, the same however
        the run got here (a resumed run included)."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.round]))


class Method(Protocol[S]):
    """Optional class attributes: ``needs_groups`` and ``needs_server`` (what the federation must
    hold, ``fedsweep.algorithms.common.check_federation``); ``uses_torch_optim`` (its round runs a
    ``torch.optim`` optimizer on the server: a Ray run's driver imports what that needs while it
    waits for its workers)."""

    name: str

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> S: ...

    def round(self, state: S, oracle: GradientOracle) -> tuple[S, dict[str, float]]: ...
