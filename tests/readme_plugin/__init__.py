"""The README's plug-in example, verbatim, so that the README cannot drift from what works."""

from dataclasses import replace

from fedsweep import Weights
from fedsweep.algorithms import MethodState


class FedSGD:
    name = "fedsgd"                               # its label in tables and progress bars
    def __init__(self, *, lr: float = 0.1):       # the config keys: method.lr
        self.lr = lr
    def init(self, x0, *, seed, oracle):
        return MethodState(x=x0.clone(), seed=seed)
    def round(self, state, oracle):               # one full communication: ∇G of every group at x_t
        grads = oracle.full_communication([state.x])
        step = Weights.zeros_like(state.x)
        for group in oracle.groups:               # ∇h = Σ_G λ_G ∇G
            step.axpy_(oracle.group_weight(group), grads[group][0])
        return replace(state, x=state.x - step * self.lr, round=state.round + 1), {}
