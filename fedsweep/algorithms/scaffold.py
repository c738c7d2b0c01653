"""SCAFFOLD: local SGD with control variates that cancel client drift.

The server holds x and a control c; client i holds its own control c_i (all 0 at first).
A round with the participating clients S:

    client i ∈ S:  y ← x, then for each of its K_i local minibatch steps
                       y ← y − lr · (∇F_i(y; batch) + c − c_i)
                   c_i⁺ = (1/K_i) Σ_k ∇F_i(y_k; batch_k)           (option II: its mean gradient)
    server:        x ← x + η_g · Σ_{i∈S} p_i (y_i − x),    p_i = π_i / Σ_{j∈S} π_j
                   c ← c + Σ_{i∈S} π_i (c_i⁺ − c_i),   c_i ← c_i⁺

so c = Σ_i π_i c_i holds at every round: the control of h = Σ_i π_i F_i. The correction c − c_i
replaces client i's gradient by an estimate of ∇h's, which removes the drift heterogeneous
clients cause in FedAvg (η_g = 1 and c = c_i = 0 is a FedAvg round). With local momentum the
correction stays out of the momentum buffer, as in the NIID-Bench code. Each participating
client receives x and c and sends y_i and c_i⁺: two vectors each way. The controls are the
method's state (one row per client), so they survive a checkpoint and any worker's restart.

(c_i⁺ as the mean of the minibatch gradients is the paper's option II,
c_i − c + (x − y_i)/(K_i lr), rewritten: the two agree in exact arithmetic without momentum.)
Karimireddy, Kale, Mohri, Reddi, Stich, Suresh: "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning" (ICML 2020), https://arxiv.org/abs/1910.06378.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fedsweep.algorithms.fedavg import FedAvg, participation_stats
from fedsweep.algorithms.programs import ClientProgram, Clients, Step, Vectors, zeros_like
from fedsweep.algorithms.protocols import GradientOracle, MethodState
from fedsweep.core.checks import check
from fedsweep.core.weights import Weights


@dataclass(frozen=True)
class ScaffoldState(MethodState):
    c: Weights | None = None  # the server's control
    controls: Weights | None = None  # c_i, stacked: row i is client i's


@dataclass(frozen=True)
class ScaffoldProgram(ClientProgram):
    """Local SGD corrected by c − c_i (``shared["c"]``, ``rows["c_i"]``); replies with the model and
    the mean of the minibatch gradients it took."""

    def init(self, clients: Clients, params: Vectors) -> dict[str, Vectors]:
        return {"grad_sum": zeros_like(params)}

    def step(self, clients: Clients, params: Vectors, grads: Vectors, state) -> Step:
        correction = [c - ci for c, ci in zip(clients.shared["c"], clients.rows["c_i"])]
        return Step(direction=grads, outside=correction, state={"grad_sum": [s + g for s, g in zip(state["grad_sum"], grads)]})

    def reply(self, clients: Clients, params: Vectors, state) -> dict[str, Vectors]:
        steps = clients.steps.clamp(min=1)
        return {"model": params, "control": [s / clients.per_client(steps, s) for s in state["grad_sum"]]}


class Scaffold(FedAvg):
    name = "scaffold"

    def __init__(
        self,
        *,
        local_epochs: int,
        lr: float,
        batch_size: int | None,
        global_lr: float = 1.0,
        participation: float | int | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        check("method.global_lr", global_lr, "> 0")
        super().__init__(local_epochs=local_epochs, lr=lr, batch_size=batch_size, participation=participation,
                         momentum=momentum, weight_decay=weight_decay)  # fmt: skip
        self.global_lr = float(global_lr)

    def client_program(self, **training) -> ClientProgram:
        return ScaffoldProgram(**training)

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> ScaffoldState:
        rows = len(oracle.clients())
        controls = Weights({n: torch.zeros((rows, *t.shape), dtype=t.dtype, device=t.device) for n, t in x0.items()})
        return ScaffoldState(x=x0.clone(), seed=seed, c=Weights.zeros_like(x0), controls=controls)

    def round(self, state: ScaffoldState, oracle: GradientOracle) -> tuple[ScaffoldState, dict[str, float]]:
        """Consumes ``state``: the new state's controls are the old ones updated in place."""
        x, c, controls = state.x, state.c, state.controls
        seed, ids, p = self.participants(state, oracle)
        index = torch.from_numpy(ids).to(x.device)
        own = Weights({n: t[index] for n, t in controls.items()})
        replies = oracle.train_each(self.program, x, clients=ids, seed=seed, shared={"c": c}, rows={"c_i": own})
        models, new = replies["model"], replies["control"]
        pi = torch.from_numpy(oracle.objective_weights()[ids]).to(x.device, x.dtype)
        p = torch.from_numpy(p).to(x.device, x.dtype)
        step = Weights({n: torch.tensordot(p, models[n] - x[n], dims=1) for n in x.names})
        control_step = Weights({n: torch.tensordot(pi, new[n] - own[n], dims=1) for n in x.names})
        for n in x.names:
            controls[n].index_copy_(0, index, new[n])  # c_i ← c_i⁺
        update = step * self.global_lr
        next_state = replace(state, x=x + update, c=c + control_step, controls=controls, round=state.round + 1)
        return next_state, {
            **participation_stats(oracle, ids),
            "norm/update": update.norm().item(),
            "norm/control": next_state.c.norm().item(),
        }
