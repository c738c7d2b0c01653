"""Full-communication sliding: the VRCS argmin step with the exact difference every step.

    x_{t+1} = argmin_x ⟨∇h(x_t) − ∇h1(x_t), x⟩ + ‖x − x_t‖²/(2θ) + h1(x)

One full communication (both groups) per round, no local steps: VRCS with q = 1.
With δ the similarity of h and h1 (‖∇²h − ∇²h1‖ ≤ δ), θ of order 1/δ makes each
round contract (the upper baseline in communications per round).
"""

from __future__ import annotations

import numpy as np

from fedsweep.core.errors import ConfigError
from fedsweep.algorithms.protocols import MethodState
from fedsweep.algorithms.common import difference_norms, draw_seed, full_difference, solver_stats
from fedsweep.algorithms.protocols import GradientOracle
from fedsweep.core.weights import Weights


def check_theta(theta: float) -> None:
    if not (isinstance(theta, (int, float)) and not isinstance(theta, bool) and theta > 0):
        raise ConfigError(f"method.theta must be > 0, got method.theta={theta!r}")


class Sliding:
    name = "sliding"

    def __init__(self, *, theta: float) -> None:
        check_theta(theta)
        self.theta = theta

    def init(self, x0: Weights, *, seed: int) -> MethodState:
        return MethodState(x=x0.clone(), rng=np.random.default_rng(seed))

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        extragrad, diffs = full_difference(oracle, state.x)
        solve = oracle.argmin(extragrad, state.x, self.theta, draw_seed(state.rng))
        state.x = solve.x
        state.round += 1
        return state, {**difference_norms(extragrad, diffs), **solver_stats([solve])}
