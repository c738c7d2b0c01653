"""FedDyn: local objectives corrected by each client's past gradient, so that the clients' own
optima and the optimum of h coincide at a fixed point (no client drift).

The server holds x and h (0 at first); client i holds g_i, its gradient of the last local
objective it minimised (0 at first). A round with the participating clients S (K clients in all):

    client i ∈ S:  y_i ≈ argmin_w  L_i(w) − ⟨g_i, w⟩ + (α/2)‖w − x‖²
                   by local SGD on the direction  ∇F_i(w) + (α(w − x) − g_i) / w_i
                   g_i ← g_i − α(y_i − x)                 (= ∇L_i(y_i) when the local solve is exact)
    server:        h ← h − α (1/K) Σ_{i∈S} (y_i − x)        (so h = (1/K) Σ_i g_i, over every client)
                   x ← (1/|S|) Σ_{i∈S} y_i − h/α

with L_i = w_i F_i and w_i = K π_i, so that (1/K) Σ_i L_i = Σ_i π_i F_i = h is the objective
(π_i the client's weight in it). A fixed point has y_i = x for every client, so g_i = ∇L_i(x),
and h = 0, so ∇h(x) = (1/K) Σ_i g_i = 0: the optimum of h, whatever the number of local steps.

Weighting (our choice, the official code's): dividing client i's local objective by w_i, so that
its optimizer steps on F_i at the configured lr, is the official code's adaptive
α_i = α / w_i (``alpha_coef / weight_list[clnt]`` in ``train_FedDyn``, weight_list = n_i K / N),
with its λ_i = −g_i/α; the server's means are unweighted, as in the paper and that code. With
equal weights (π_i = 1/K) this is the paper's rule exactly: direction ∇F_i(w) − g_i + α(w − x).
Not reproduced: the official code's gradient clipping (max norm 10).

Each participating client receives x (and holds g_i, the method's per-client row here, with
w_i) and sends y_i: one vector each way. The rows g_i are the method's state (K model-sized
vectors, like SCAFFOLD's controls), so they survive a checkpoint and any worker's restart.

Acar, Zhao, Matas, Mattina, Whatmough, Saligrama: "Federated Learning Based on Dynamic
Regularization" (ICLR 2021), https://arxiv.org/abs/2111.04263; official code
https://github.com/alpemreacar/FedDyn (``utils_methods.py``, ``utils_general.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fedsweep.algorithms.fedavg import FedAvg, participation_stats
from fedsweep.algorithms.programs import ClientProgram, Clients, Step, Vectors
from fedsweep.algorithms.protocols import GradientOracle, MethodState
from fedsweep.core.checks import check
from fedsweep.core.weights import Weights

SCALAR = "value"  # the one name of a Weights holding a number per client (as in the engines' replies)


@dataclass(frozen=True)
class FedDynState(MethodState):
    h: Weights | None = None  # the server's h = (1/K) Σ_i g_i
    grads: Weights | None = None  # g_i, stacked: row i is client i's


@dataclass(frozen=True)
class DynProgram(ClientProgram):
    """Local SGD on F_i(w) + (α(w − x) − g_i)·w / w_i: direction ∇F_i(w) + (α(w − x) − g_i) / w_i,
    with g_i from ``rows["g_i"]`` and w_i = K π_i from ``rows["weight"]`` (a number per client)."""

    alpha: float = 0.0

    def step(self, clients: Clients, params: Vectors, grads: Vectors, state) -> Step:
        weight = clients.rows["weight"][0]
        direction = [
            g + (self.alpha * (w - x) - gi) / clients.per_client(weight, w)
            for g, w, x, gi in zip(grads, params, clients.x, clients.rows["g_i"])
        ]
        return Step(direction=direction)


class FedDyn(FedAvg):
    """FedDyn over a :class:`GradientOracle` (see the module docstring for the update rules)."""

    name = "feddyn"

    def __init__(
        self,
        *,
        alpha: float,
        local_epochs: int,
        lr: float,
        batch_size: int | None,
        participation: float | int | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        check("method.alpha", alpha, "> 0")
        self.alpha = float(alpha)
        super().__init__(local_epochs=local_epochs, lr=lr, batch_size=batch_size, participation=participation,
                         momentum=momentum, weight_decay=weight_decay)  # fmt: skip

    def client_program(self, **training) -> ClientProgram:
        return DynProgram(alpha=self.alpha, **training)

    def init(self, x0: Weights, *, seed: int, oracle: GradientOracle) -> FedDynState:
        rows = len(oracle.clients())
        grads = Weights({n: torch.zeros((rows, *t.shape), dtype=t.dtype, device=t.device) for n, t in x0.items()})
        return FedDynState(x=x0.clone(), seed=seed, h=Weights.zeros_like(x0), grads=grads)

    def round(self, state: FedDynState, oracle: GradientOracle) -> tuple[FedDynState, dict[str, float]]:
        """Consumes ``state``: the new state's rows g_i are the old ones updated in place."""
        x, h, grads, alpha = state.x, state.h, state.grads, self.alpha
        seed, ids, _ = self.participants(state, oracle)  # the server's means are unweighted (see above)
        index = torch.from_numpy(ids).to(x.device)
        pi = torch.from_numpy(oracle.objective_weights()).to(x.device, x.dtype)
        own = Weights({n: t[index] for n, t in grads.items()})
        weight = Weights({SCALAR: len(pi) * pi[index]})  # w_i = K π_i
        models = oracle.train_each(self.program, x, clients=ids, seed=seed, rows={"g_i": own, "weight": weight})["model"]
        moves = Weights({n: models[n] - x[n] for n in x.names})  # y_i − x, stacked
        for n in x.names:
            grads[n].index_copy_(0, index, own[n] - alpha * moves[n])  # g_i ← g_i − α(y_i − x)
        new_h = Weights({n: h[n] - (alpha / len(pi)) * moves[n].sum(0) for n in x.names})
        new_x = Weights({n: x[n] + moves[n].mean(0) - new_h[n] / alpha for n in x.names})
        return replace(state, x=new_x, h=new_h, grads=grads, round=state.round + 1), {
            **participation_stats(oracle, ids),
            "norm/update": (new_x - x).norm().item(),
            "norm/h": new_h.norm().item(),
        }
