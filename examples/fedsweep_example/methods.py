"""FedProx written as a plug-in, with its own client program: a method is ``init``/``round`` over
the gradient oracle, and what its clients do is a ``ClientProgram`` the engines run unchanged.

Every client runs local SGD on F_i(w) + (μ/2)‖w − x_t‖²; the server moves toward the weighted
average of the clients' models with step ``server_lr``:

    x_{t+1} = x_t + server_lr · (Σ_i π_i y_i − x_t)

(Li et al., MLSys 2020, https://arxiv.org/abs/1812.06127; server_lr = 1 is plain FedProx.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsweep.algorithms import MethodState
from fedsweep.algorithms.programs import ClientProgram, LocalSGD, Step
from fedsweep.algorithms.protocols import GradientOracle
from fedsweep.core.errors import ConfigError
from fedsweep.core.weights import Weights


@dataclass(frozen=True)
class ProxStep(ClientProgram):
    """One local step: ∇F_i(w) + μ(w − x)."""

    mu: float = 0.01

    def step(self, clients, params, grads, state) -> Step:
        return Step(direction=[g + self.mu * (w - x) for g, w, x in zip(grads, params, clients.x)])


class ProxPlugin:
    name = "prox_plugin"  # the label in tables and progress bars

    def __init__(self, *, mu: float = 0.01, lr: float = 0.05, local_epochs: int = 1, batch_size: int | None = 32,
                 server_lr: float = 1.0) -> None:  # fmt: skip
        if mu < 0:
            raise ConfigError(f"method.mu must be >= 0, got method.mu={mu!r}")
        if not 0 < server_lr <= 2:
            raise ConfigError(f"method.server_lr must be in (0, 2], got method.server_lr={server_lr!r}")
        self.program = ProxStep(epochs=local_epochs, batch_size=batch_size, optimizer=LocalSGD(lr=lr), mu=mu)
        self.server_lr = server_lr

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> MethodState:
        return MethodState(x=x0.clone(), seed=seed)

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        seed = int(state.rng().integers(2**31 - 1))
        sums = oracle.train(self.program, state.x, clients=oracle.clients(), weights=oracle.objective_weights(), seed=seed)
        step = (sums["model"] - state.x) * self.server_lr
        return replace(state, x=state.x + step, round=state.round + 1), {"norm/update": step.norm().item()}
