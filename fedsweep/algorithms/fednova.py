"""FedNova: FedAvg with each client's update normalised by how far its local steps reach.

Clients that take more local steps (more data at the same batch size, more epochs) move further,
so FedAvg's average is weighted towards them: it converges to the optimum of
Σ_i p_i τ_i F_i / Σ_j p_j τ_j instead of h = Σ_i p_i F_i (objective inconsistency). FedNova divides
each update by the client's own step count and rescales the average by a common one:

    client i ∈ S:  y_i after τ_i local steps of SGD (momentum ρ, weight decay) from x
                   a_i = τ_i                                         without momentum,
                       = (τ_i − ρ(1 − ρ^τ_i)/(1 − ρ)) / (1 − ρ)     with momentum ρ
                   replies d_i = (x − y_i) / a_i  and  a_i
    server:        τ_eff = Σ_{i∈S} p_i a_i,    x ← x − τ_eff Σ_{i∈S} p_i d_i

with p_i = π_i / Σ_{j∈S} π_j the self-normalised weights (π_i the client's weight in h: n_i/N in
one population). a_i = ‖a_i‖₁ of the paper's normalising vector for SGD with momentum
(``LocalSGD.effective_steps``), as in the official code and the Flower/NIID-Bench baseline; with
equal a_i the round is FedAvg's. One weighted sum comes back (``oracle.train``), so it works with
``participation``. Not included: the proximal variant (FedProx's μ changes a_i) and the
official code's server momentum (``gmf``).

Wang, Liu, Liang, Joshi, Poor: "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization" (NeurIPS 2020), https://arxiv.org/abs/2007.07481; official code
https://github.com/JYWa/FedNova (``distoptim/FedNova.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from fedsweep.algorithms.fedavg import FedAvg, participation_stats
from fedsweep.algorithms.programs import ClientProgram, Clients, Vectors
from fedsweep.algorithms.protocols import GradientOracle, MethodState


@dataclass(frozen=True)
class NovaProgram(ClientProgram):
    """Local SGD on the client's loss, replying with d_i = (x − y_i)/a_i (``update``) and a_i
    (``a``, a number per client) from its own step count τ_i."""

    def reply(self, clients: Clients, params: Vectors, state) -> dict[str, Vectors | Tensor]:
        a = self.optimizer.effective_steps(clients.steps.clamp(min=1))
        return {"update": [(x - y) / clients.per_client(a, y) for x, y in zip(clients.x, params)], "a": a}


class FedNova(FedAvg):
    """FedNova over a :class:`GradientOracle` (see the module docstring for the update rules)."""

    name = "fednova"

    def __init__(
        self,
        *,
        local_epochs: int,
        lr: float,
        batch_size: int | None,
        participation: float | int | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(local_epochs=local_epochs, lr=lr, batch_size=batch_size, participation=participation,
                         aggregation="self_normalized", momentum=momentum, weight_decay=weight_decay)  # fmt: skip

    def client_program(self, **training) -> ClientProgram:
        return NovaProgram(**training)

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        seed, ids, p = self.participants(state, oracle)
        sums = oracle.train(self.program, state.x, clients=ids, weights=p, seed=seed)
        tau_eff = float(sums["a"])  # Σ p_i a_i
        update = sums["update"].mul_(-tau_eff)  # −τ_eff Σ p_i d_i
        return replace(state, x=state.x + update, round=state.round + 1), {
            **participation_stats(oracle, ids),
            "norm/update": update.norm().item(),
            "tau_eff": tau_eff,
        }
