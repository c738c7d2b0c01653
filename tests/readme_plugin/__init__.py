"""The README's plug-in example, verbatim, so that the README cannot drift from what works."""

import numpy as np
from fedsweep.algorithms import MethodState


class FedSGD:
    name = "fedsgd"                               # its label in tables and progress bars
    def __init__(self, *, lr: float = 0.1):       # the config keys: method.lr
        self.lr = lr
    def init(self, x0, *, seed):
        return MethodState(x=x0.clone(), rng=np.random.default_rng(seed))
    def round(self, state, oracle):               # one full communication: ∇f and ∇g at x_t
        grads = oracle.full_communication([state.x])
        state.x = state.x - (grads["f"][0] + grads["g"][0]) * (self.lr / 2)
        state.round += 1
        return state, {}
