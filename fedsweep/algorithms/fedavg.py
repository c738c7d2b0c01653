"""FedAvg and FedProx: every participating client trains locally from x_t, the server averages.

    x_{t+1} = x_t + Σ_{i∈S} w_i (y_i − x_t),   y_i = the client's model after its local epochs

S is every client, or a uniform sample of the whole population (``participation``: a
fraction or a count) drawn each round. ``aggregation`` picks the weights:
``self_normalized`` (McMahan et al.): w_i = π_i / Σ_{j∈S} π_j, so x_{t+1} = Σ_S w_i y_i;
``unbiased``: w_i = (K/M) π_i, whose expected update is the full-participation one
(``fedsweep.algorithms.aggregation``). π_i = λ_G n_i / n_G is the client's weight in the
objective (n_i / N in one population). Local training is SGD with momentum and weight decay
(a fresh buffer each round). With many local steps on heterogeneous clients the average
drifts away from the optimum of h (client drift).

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(AISTATS 2017), https://arxiv.org/abs/1602.05629. FedProx: Li, Sahu, Zaheer, Sanjabi,
Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks" (MLSys 2020),
https://arxiv.org/abs/1812.06127.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedsweep.algorithms.aggregation import sample_clients, self_normalized, unbiased
from fedsweep.algorithms.common import draw_seed
from fedsweep.algorithms.programs import ClientProgram, Clients, LocalSGD, Step, Vectors
from fedsweep.algorithms.protocols import GradientOracle, MethodState
from fedsweep.core.checks import check, shown
from fedsweep.core.errors import ConfigError
from fedsweep.core.weights import Weights

AGGREGATIONS = ("self_normalized", "unbiased")


@dataclass(frozen=True)
class ProxProgram(ClientProgram):
    """Local SGD on F_i(w) + (μ/2)‖w − x‖²: direction ∇F_i(w) + μ(w − x) (μ = 0: FedAvg's client)."""

    mu: float = 0.0

    def step(self, clients: Clients, params: Vectors, grads: Vectors, state) -> Step:
        if not self.mu:
            return Step(direction=grads)
        return Step(direction=[g + self.mu * (w - x) for g, w, x in zip(grads, params, clients.x)])


class FedAvg:
    """FedAvg over a :class:`GradientOracle`; subclasses change the client program or the server step."""

    name = "fedavg"

    def __init__(
        self,
        *,
        local_epochs: int,
        lr: float,
        batch_size: int | None,
        participation: float | int | None = None,
        aggregation: str = "self_normalized",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        check("method.participation", participation, "share")
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown method.aggregation={shown(aggregation)}; known: {', '.join(AGGREGATIONS)}")
        self.participation, self.aggregation = participation, aggregation
        self.optimizer = LocalSGD(lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.program = self.client_program(epochs=local_epochs, batch_size=batch_size, optimizer=self.optimizer)

    def client_program(self, **training) -> ClientProgram:
        return ProxProgram(**training)

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> MethodState:
        return MethodState(x=x0.clone(), seed=seed)

    def participants(self, state: MethodState, oracle: GradientOracle) -> tuple[int, np.ndarray, np.ndarray]:
        """This round's seed for the clients' batches, its clients (ids) and their aggregation weights."""
        rng = state.rng()
        seed = draw_seed(rng)
        everyone = oracle.clients()
        chosen = sample_clients(rng, len(everyone), self.participation)
        ids = everyone if chosen is None else everyone[chosen]
        pi = oracle.objective_weights()
        weights = unbiased(pi, ids) if self.aggregation == "unbiased" else self_normalized(pi, ids)
        return seed, ids, weights

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        seed, ids, weights = self.participants(state, oracle)
        sums = oracle.train(self.program, state.x, clients=ids, weights=weights, seed=seed)
        update = sums["model"].axpy_(-weights.sum(), state.x)  # Σ w_i (y_i − x)
        return replace(state, x=state.x + update, round=state.round + 1), {
            **participation_stats(oracle, ids),
            "norm/update": update.norm().item(),
        }


class FedProx(FedAvg):
    """FedAvg whose clients minimise F_i(w) + (μ/2)‖w − x_t‖² locally, which holds each client near
    x_t and so limits client drift under heterogeneity (μ = 0 is FedAvg)."""

    name = "fedprox"

    def __init__(
        self,
        *,
        mu: float,
        local_epochs: int,
        lr: float,
        batch_size: int | None,
        participation: float | int | None = None,
        aggregation: str = "self_normalized",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        check("method.mu", mu, ">= 0")
        self.mu = float(mu)
        super().__init__(
            local_epochs=local_epochs, lr=lr, batch_size=batch_size, participation=participation,
            aggregation=aggregation, momentum=momentum, weight_decay=weight_decay,
        )  # fmt: skip

    def client_program(self, **training) -> ClientProgram:
        return ProxProgram(mu=self.mu, **training)


def participation_stats(oracle: GradientOracle, ids: np.ndarray) -> dict[str, float]:
    """How many clients of each group took part."""
    return {f"clients/{g}": float(np.isin(oracle.clients(g), ids).sum()) for g in oracle.groups}
