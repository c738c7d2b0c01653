"""A least-squares federation served by the real runtime, oracle and server (float32 model), with
its optimum and the exact proximal step in closed form: what the solver's answers are checked
against."""

from __future__ import annotations

import functools

import torch
from torch import nn

from fedsweep.task import Dataset
from fedsweep.federation.client_data import ClientData
from fedsweep.algorithms.protocols import Solution
from fedsweep.federation.oracle import FederatedOracle
from fedsweep.federation.runtime.local import LocalRuntime
from fedsweep.federation.server import Server
from fedsweep.federation.solvers import LBFGS, OptimizerSteps
from fedsweep.task.losses import squared_error
from fedsweep.core.weights import Weights

DIM, N, SERVER_N = 8, 60, 20


class LeastSquaresFederation:
    """Groups f and g of two clients each, G(x) = mean_j (a_jᵀx − b_j)², and the server's f1, g1:
    perturbed copies of a third of each group's rows."""

    def __init__(self, *, seed: int = 0, tolerance: float | None = 0.1, solver: str = "lbfgs", lr: float = 0.01) -> None:
        gen = torch.Generator().manual_seed(seed)

        def rand(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64)

        A = {"f": rand(N, DIM), "g": rand(N, DIM) * 1.5}
        b = {"f": A["f"] @ rand(DIM) + 0.1 * rand(N), "g": A["g"] @ (rand(DIM) + 2.0) + 0.1 * rand(N)}
        A1 = {g: A[g][:SERVER_N] + 0.3 * rand(SERVER_N, DIM) for g in "fg"}
        b1 = {g: b[g][:SERVER_N] + 0.1 * rand(SERVER_N) for g in "fg"}
        self.hessian = sum(_hessian(A[g]) for g in "fg") / 2
        self.server_hessian = sum(_hessian(A1[g]) for g in "fg") / 2
        self.grad0 = sum(_grad0(A[g], b[g]) for g in "fg") / 2  # ∇h(0)
        self.server_grad0 = sum(_grad0(A1[g], b1[g]) for g in "fg") / 2
        self.optimum = torch.linalg.solve(self.hessian, -self.grad0)
        self.delta = torch.linalg.matrix_norm(self.hessian - self.server_hessian, ord=2).item()
        self.group_deltas = {  # δ_G = ‖∇²G − ∇²G1‖₂
            g: torch.linalg.matrix_norm(_hessian(A[g]) - _hessian(A1[g]), ord=2).item() for g in "fg"
        }

        clients = ClientData.from_groups({g: [_data(A[g][i::2], b[g][i::2]) for i in range(2)] for g in "fg"})
        runtime = LocalRuntime(device="cpu")
        runtime.attach(clients, _model, loss=squared_error)
        solver = (LBFGS(tolerance=tolerance) if solver == "lbfgs" else
                  OptimizerSteps(optimizer=functools.partial(torch.optim.SGD, lr=lr), epochs=1, batch_size=None,
                                 tolerance=tolerance))  # fmt: skip
        halves = {"f": 0.5, "g": 0.5}
        self.server = Server(_model(), {g: _data(A1[g], b1[g]) for g in "fg"}, group_weights=halves, solver=solver,
                             loss=squared_error)  # fmt: skip
        self.oracle = FederatedOracle(
            runtime, clients, self.server, group_weights=halves, batch_size=None, deterministic=True,
            device=torch.device("cpu"),
        )  # fmt: skip

    def x0(self) -> Weights:
        return Weights.from_model(self.server.model).clone()

    def error(self, x: Weights) -> float:
        """|x − x*| in float64."""
        return (x["weight"][0].double() - self.optimum).norm().item()

    def exact_argmin(self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance=None) -> Solution:
        """The proximal step in closed form, in float64: (∇²h1 + I/θ) x = −v + c/θ − ∇h1(0)."""
        v, c = linear["weight"][0].double(), center["weight"][0].double()
        x = torch.linalg.solve(self.server_hessian + torch.eye(DIM, dtype=torch.float64) / theta,
                               -v + c / theta - self.server_grad0)  # fmt: skip
        return Solution(Weights({"weight": x.unsqueeze(0)}), float("nan"), 0, 0.0)


def _hessian(A: torch.Tensor) -> torch.Tensor:
    return 2 * A.T @ A / len(A)


def _grad0(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -2 * A.T @ b / len(A)


def _data(A: torch.Tensor, b: torch.Tensor) -> Dataset:
    return Dataset(A.float(), b.float().unsqueeze(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(DIM, 1, bias=False)
