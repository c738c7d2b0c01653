"""SCAFFOLD: local SGD with control variates that cancel client drift.

The server holds x and a control c; client i holds its own control c_i (all 0 at first).
A round with the contacted clients S_G of each group G:

    client i ∈ S_G:  y ← x, then for each of its K_i local minibatch steps
                         y ← y − lr · (∇F_i(y; batch) + c − c_i)
                     c_i⁺ = (1/K_i) Σ_k ∇F_i(y_k; batch_k)           (option II: its mean gradient)
    server:          x ← x + η_g · ½ Σ_G Σ_{i∈S_G} p_i (y_i − x),    p_i = n_i / Σ_{j∈S_G} n_j
                     c ← c + ½ Σ_G Σ_{i∈S_G} (n_i / n_G) (c_i⁺ − c_i),   c_i ← c_i⁺

so c = ½ Σ_G Σ_{i∈G} (n_i/n_G) c_i holds at every round: the control of h = (f + g)/2,
the same example weights as the other methods. The correction c − c_i replaces client
i's gradient by an estimate of ∇h's, which is what removes the drift that heterogeneous
groups cause in FedAvg (η_g = 1 and c = c_i = 0 is a FedAvg round). Each contacted
client receives x and c and sends y_i and c_i⁺: two vectors each way. The controls are
the method's state (``MethodState.extra``: one row per client), so they survive a
checkpoint and any worker's restart.

(c_i⁺ as the mean of the minibatch gradients is the paper's option II,
c_i − c + (x − y_i)/(K_i lr), rewritten: the two agree in exact arithmetic.)
Karimireddy, Kale, Mohri, Reddi, Stich, Suresh: "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning" (ICML 2020), https://arxiv.org/abs/1910.06378.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsweep.core.errors import ConfigError
from fedsweep.algorithms.aggregation import group_weights, participation_weights, sample_clients
from fedsweep.algorithms.protocols import MethodState
from fedsweep.algorithms.common import draw_seed
from fedsweep.algorithms.fedavg import FedAvg
from fedsweep.algorithms.protocols import GROUPS, GradientOracle
from fedsweep.core.weights import Weights


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
    ) -> None:
        if not (isinstance(global_lr, (int, float)) and not isinstance(global_lr, bool) and global_lr > 0):
            raise ConfigError(f"method.global_lr must be > 0, got method.global_lr={global_lr!r}")
        super().__init__(local_epochs=local_epochs, lr=lr, batch_size=batch_size, participation=participation)
        self.global_lr = float(global_lr)

    def round(self, state: MethodState, oracle: GradientOracle) -> tuple[MethodState, dict[str, float]]:
        x = state.x
        if not state.extra:  # c = c_i = 0
            state.extra["c"] = Weights.zeros_like(x)
            for group in GROUPS:
                state.extra[f"c_{group}"] = _stack_zeros(x, oracle.num_clients(group))
        c = state.extra["c"]
        seed = draw_seed(state.rng)
        subsets = {group: sample_clients(state.rng, oracle.num_clients(group), self.participation) for group in GROUPS}
        chosen = {group: _positions(subset, oracle.num_clients(group)) for group, subset in subsets.items()}
        drift = {  # d_i = c − c_i, one row per contacted client
            group: Weights({n: c[n] - _picked(state.extra[f"c_{group}"][n], subsets[group]) for n in x.names})
            for group in GROUPS
        }
        runs = oracle.local_runs(
            x, epochs=self.local_epochs, lr=self.lr, batch_size=self.batch_size, seed=seed, subsets=subsets, drift=drift
        )  # fmt: skip
        step, control_step = Weights.zeros_like(x), Weights.zeros_like(x)
        for group in GROUPS:  # the stacked clients' rows, weighted
            sizes, controls = oracle.client_sizes(group), state.extra[f"c_{group}"]
            models, mean_grads = runs[group]
            rows = torch.from_numpy(chosen[group]).to(x.device)
            p = _on(0.5 * participation_weights(sizes, chosen[group]), x)
            a = _on(0.5 * group_weights(sizes)[chosen[group]], x)
            for n in x.names:
                step[n].add_(torch.tensordot(p, models[n] - x[n], dims=1))
                control_step[n].add_(torch.tensordot(a, mean_grads[n] - controls[n][rows], dims=1))
                controls[n].index_copy_(0, rows, mean_grads[n])  # c_i ← c_i⁺
        state.x = x + step * self.global_lr
        c.add_(control_step)
        state.round += 1
        return state, {
            **{f"clients/{group}": float(len(chosen[group])) for group in GROUPS},
            "norm/update": (step * self.global_lr).norm().item(),
            "norm/control": c.norm().item(),
        }


def _stack_zeros(x: Weights, rows: int) -> Weights:
    return Weights({n: torch.zeros((rows, *t.shape), dtype=t.dtype, device=t.device) for n, t in x.items()})


def _picked(rows: torch.Tensor, subset: np.ndarray | None) -> torch.Tensor:
    """The rows of the contacted clients (all of them without a subset: no copy)."""
    return rows if subset is None else rows[torch.from_numpy(subset).to(rows.device)]


def _on(weights: np.ndarray, like: Weights) -> torch.Tensor:
    return torch.from_numpy(weights).to(like.device, like.dtype)


def _positions(subset: np.ndarray | None, num_clients: int) -> np.ndarray:
    return np.arange(num_clients) if subset is None else subset

