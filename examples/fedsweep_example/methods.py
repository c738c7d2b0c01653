"""FedProx written as a plug-in: a method is ``init``/``round`` over the gradient oracle.

Every client runs local SGD on F_i(w) + (μ/2)‖w − x_t‖², the server moves toward the
example-weighted average of the groups' models with step ``server_lr``:

    x_{t+1} = x_t + server_lr · (½(x̄_f + x̄_g) − x_t)

(Li et al., MLSys 2020, https://arxiv.org/abs/1812.06127; server_lr = 1 is plain FedProx.)
"""

from __future__ import annotations

import numpy as np

from fedsweep.core.errors import ConfigError
from fedsweep.algorithms import MethodState
from fedsweep.algorithms.protocols import GradientOracle
from fedsweep.core.weights import Weights


class ProxPlugin:
    name = "prox_plugin"  # the label in tables and progress bars

    def __init__(self, *, mu: float = 0.01, lr: float = 0.05, local_epochs: int = 1, batch_size: int | None = 32,
                 server_lr: float = 1.0) -> None:  # fmt: skip
        if mu < 0:
            raise ConfigError(f"method.mu must be >= 0, got method.mu={mu!r}")
        if not 0 < server_lr <= 2:
            raise ConfigError(f"method.server_lr must be in (0, 2], got method.server_lr={server_lr!r}")
        self.mu, self.lr, self.local_epochs, self.batch_size, self.server_lr = mu, lr, local_epochs, batch_size, server_lr

    def init(self, x0: Weights, *, seed: int) -> MethodState:
        return MethodState(x=x0.clone(), rng=np.random.default_rng(seed))

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        means = oracle.local_updates(
            state.x, epochs=self.local_epochs, lr=self.lr, batch_size=self.batch_size,
            seed=int(state.rng.integers(2**31 - 1)), subsets={"f": None, "g": None}, prox=self.mu,
        )  # fmt: skip
        step = ((means["f"] + means["g"]) / 2 - state.x) * self.server_lr
        state.x = state.x + step
        state.round += 1
        return state, {"norm/update": step.norm().item()}
