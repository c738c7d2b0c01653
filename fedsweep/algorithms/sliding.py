"""Full-communication sliding: the VRCS argmin step with the exact difference every step.

    x_{t+1} = argmin_x ⟨∇h(x_t) − ∇h1(x_t), x⟩ + ‖x − x_t‖²/(2θ) + h1(x)

One full communication (every group) per round, no local steps: VRCS with q = 1. With δ the
similarity of h and h1 (‖∇²h − ∇²h1‖ ≤ δ), θ of order 1/δ makes each round contract (the upper
baseline in communications per round). Any federation whose server holds data of every group.
"""

from __future__ import annotations

from dataclasses import replace

from fedsweep.algorithms.common import difference_norms, draw_seed, full_difference, solver_stats
from fedsweep.algorithms.protocols import GradientOracle, MethodState
from fedsweep.core.checks import check
from fedsweep.core.weights import Weights


class Sliding:
    name = "sliding"
    uses_torch_optim = True  # the server steps with a torch.optim optimizer (fedsweep.experiment.loop)
    needs_server = True  # h1: the server's own data of every group (checked before any round)

    def __init__(self, *, theta: float) -> None:
        check("method.theta", theta, "> 0")
        self.theta = theta

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> MethodState:
        return MethodState(x=x0.clone(), seed=seed)

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        extragrad, diffs = full_difference(oracle, state.x)
        solve = oracle.argmin(extragrad, state.x, self.theta, draw_seed(state.rng()))
        return replace(state, x=solve.x, round=state.round + 1), {**difference_norms(extragrad, diffs), **solver_stats([solve])}
