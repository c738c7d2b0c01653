"""Server-only training, the lower baseline: the server's argmin with no client information.

    x_{t+1} = argmin_x ‖x − x_t‖²/(2θ) + h1(x)

A proximal-point method on the server's own data h1; it never communicates, so it shows what
the clients add.
"""

from __future__ import annotations

from dataclasses import replace

from fedsweep.algorithms.common import draw_seed, solver_stats
from fedsweep.algorithms.protocols import GradientOracle, MethodState
from fedsweep.core.checks import check
from fedsweep.core.weights import Weights


class ServerOnly:
    name = "server_only"
    needs_server = True

    def __init__(self, *, theta: float) -> None:
        check("method.theta", theta, "> 0")
        self.theta = theta

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> MethodState:
        return MethodState(x=x0.clone(), seed=seed)

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        solve = oracle.argmin(Weights.zeros_like(state.x), state.x, self.theta, draw_seed(state.rng()))
        return replace(state, x=solve.x, round=state.round + 1), solver_stats([solve])
