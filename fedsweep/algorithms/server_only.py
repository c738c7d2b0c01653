"""Server-only training, the lower baseline: the server's argmin with no client information.

    x_{t+1} = argmin_x ‖x − x_t‖²/(2θ) + h1(x)

A proximal-point method on the server's own data h1 (sliding without its communication); it
never communicates, so it shows what the clients add.
"""

from __future__ import annotations

from dataclasses import replace

from fedsweep.algorithms.common import draw_seed, solver_stats
from fedsweep.algorithms.protocols import GradientOracle, MethodState
from fedsweep.algorithms.sliding import Sliding
from fedsweep.core.weights import Weights


class ServerOnly(Sliding):
    name = "server_only"

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        solve = oracle.argmin(Weights.zeros_like(state.x), state.x, self.theta, draw_seed(state.rng()))
        return replace(state, x=solve.x, round=state.round + 1), solver_stats([solve])
