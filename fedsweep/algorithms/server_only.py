"""Server-only training, the lower baseline: the server's argmin with no client information.

    x_{t+1} = argmin_x ‖x − x_t‖²/(2θ) + h1(x)

A proximal-point method on the server's own data h1 = (f1 + g1)/2; it never
communicates, so it shows what the clients add.
"""

from __future__ import annotations

import numpy as np

from fedsweep.algorithms.protocols import MethodState
from fedsweep.algorithms.common import draw_seed, solver_stats
from fedsweep.algorithms.protocols import GradientOracle
from fedsweep.algorithms.sliding import check_theta
from fedsweep.core.weights import Weights


class ServerOnly:
    name = "server_only"

    def __init__(self, *, theta: float) -> None:
        check_theta(theta)
        self.theta = theta
        self._zero: Weights | None = None

    def init(self, x0: Weights, *, seed: int) -> MethodState:
        self._zero = Weights.zeros_like(x0)
        return MethodState(x=x0.clone(), rng=np.random.default_rng(seed))

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        zero = self._zero if self._zero is not None else Weights.zeros_like(state.x)
        solve = oracle.argmin(zero, state.x, self.theta, draw_seed(state.rng))
        state.x = solve.x
        state.round += 1
        return state, solver_stats([solve])
