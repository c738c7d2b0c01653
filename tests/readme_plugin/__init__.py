"""The README's plug-in example, verbatim, so that the README cannot drift from what works."""

from dataclasses import dataclass, replace

from fedsweep.algorithms import MethodState
from fedsweep.algorithms.common import draw_seed
from fedsweep.algorithms.programs import ClientProgram, LocalSGD, Step


class FedSGD:
    """x ← x − lr · Σ_i π_i ∇F_i(x): every client's full-batch gradient, once a round."""
    name = "fedsgd"                                   # its label in tables and progress bars
    def __init__(self, *, lr: float = 0.1):           # its config keys: method.lr
        self.lr = lr
        self.program = GradientReply(epochs=1, batch_size=None, optimizer=LocalSGD(lr=lr))
    def init(self, x0, *, seed, oracle):
        return MethodState(x=x0.clone(), seed=seed)
    def round(self, state, oracle):                   # one contact with every client
        sums = oracle.train(self.program, state.x, clients=oracle.clients(),
                            weights=oracle.objective_weights(), seed=draw_seed(state.rng()))
        return replace(state, x=state.x - sums["grad"] * self.lr, round=state.round + 1), {}


@dataclass(frozen=True)
class GradientReply(ClientProgram):                   # what each client does with x
    def step(self, clients, params, grads, state):    # one local step; keep its gradient
        return Step(direction=grads, state={"grad": grads})
    def reply(self, clients, params, state):          # and send the gradient back
        return {"grad": state["grad"]}
