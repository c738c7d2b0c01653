"""FedAvg: every client runs local SGD from x_t, the server averages.

    x_{t+1} = ½ (x̄_f + x̄_g),   x̄_G = Σ_{i∈G} (n_i / n_G) · SGD_i^E(x_t)

where SGD_i^E is E epochs of plain SGD (step ``lr``) on client i's shard. With
``participation`` each group sends only a uniform sample S_G of its clients per round
(drawn from the method's generator), averaged with weights n_i / Σ_{j∈S_G} n_j. The
groups are averaged with equal weight so that the fixed point targets
h = (f + g)/2 like the other methods. With E > 1 on heterogeneous groups the
average drifts away from the optimum of h (client drift).
McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (AISTATS 2017), https://arxiv.org/abs/1602.05629.
"""

from __future__ import annotations

import numpy as np

from fedsweep.core.errors import ConfigError
from fedsweep.algorithms.aggregation import sample_clients
from fedsweep.algorithms.protocols import MethodState
from fedsweep.algorithms.common import check_share, draw_seed
from fedsweep.algorithms.protocols import GROUPS, GradientOracle
from fedsweep.core.weights import Weights


class FedAvg:
    name = "fedavg"
    prox = 0.0  # FedProx's μ

    def __init__(
        self, *, local_epochs: int, lr: float, batch_size: int | None, participation: float | int | None = None
    ) -> None:
        if not (isinstance(local_epochs, int) and local_epochs >= 1):
            raise ConfigError(f"method.local_epochs must be a positive integer, got method.local_epochs={local_epochs}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ConfigError(f"method.lr must be > 0, got method.lr={lr}")
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(f"method.batch_size must be a positive integer or null, got method.batch_size={batch_size}")
        check_share("method.participation", participation)
        self.local_epochs, self.lr, self.batch_size = local_epochs, lr, batch_size
        self.participation = participation

    def init(self, x0: Weights, *, seed: int) -> MethodState:
        return MethodState(x=x0.clone(), rng=np.random.default_rng(seed))

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        seed = draw_seed(state.rng)
        subsets = {group: sample_clients(state.rng, oracle.num_clients(group), self.participation) for group in GROUPS}
        means = oracle.local_updates(
            state.x, epochs=self.local_epochs, lr=self.lr, batch_size=self.batch_size, seed=seed, subsets=subsets,
            prox=self.prox,
        )  # fmt: skip
        stats = {
            f"clients/{group}": float(oracle.num_clients(group) if subset is None else len(subset))
            for group, subset in subsets.items()
        }
        x_next = (means["f"] + means["g"]) / 2
        stats["norm/update"] = (x_next - state.x).norm().item()
        state.x = x_next
        state.round += 1
        return state, stats


class FedProx(FedAvg):
    """FedProx: FedAvg whose clients minimise F_i(w) + (μ/2)‖w − x_t‖² locally,

        w ← w − lr·(∇F_i(w) + μ (w − x_t)),

    which holds each client near x_t and so limits client drift under heterogeneity
    (μ = 0 is FedAvg). Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith: "Federated Optimization
    in Heterogeneous Networks" (MLSys 2020), https://arxiv.org/abs/1812.06127.
    """

    name = "fedprox"

    def __init__(
        self,
        *,
        mu: float,
        local_epochs: int,
        lr: float,
        batch_size: int | None,
        participation: float | int | None = None,
    ) -> None:
        if not (isinstance(mu, (int, float)) and not isinstance(mu, bool) and mu >= 0):
            raise ConfigError(f"method.mu must be a number >= 0, got method.mu={mu!r}")
        super().__init__(local_epochs=local_epochs, lr=lr, batch_size=batch_size, participation=participation)
        self.prox = float(mu)
