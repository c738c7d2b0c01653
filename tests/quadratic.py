"""A least-squares federation with closed-form gradients and argmin, for testing method maths."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedsweep.algorithms.protocols import Solution
from fedsweep.core.weights import Weights


class LeastSquares:
    """G(x) = ‖A x − b‖² / (2n) for each of f, g (clients) and f1, g1 (server)."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        self.A, self.b = A, b

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.A.T @ (self.A @ x - self.b) / len(self.b)

    @property
    def hessian(self) -> torch.Tensor:
        return self.A.T @ self.A / len(self.b)


class QuadraticOracle:
    """Exact gradients and exact argmin; counts calls per group."""

    deterministic = True

    def __init__(self, *, dim: int = 8, n: int = 40, server_noise: float = 0.1, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        dt = torch.float64

        def rand(*shape):
            return torch.randn(*shape, generator=gen, dtype=dt)

        A_f, A_g = rand(n, dim), rand(n, dim) * 1.5
        x_f, x_g = rand(dim), rand(dim) + 2.0  # heterogeneous optima
        self.f = LeastSquares(A_f, A_f @ x_f)
        self.g = LeastSquares(A_g, A_g @ x_g)
        self.f1 = LeastSquares(A_f + server_noise * rand(n, dim), A_f @ x_f + server_noise * rand(n))
        self.g1 = LeastSquares(A_g + server_noise * rand(n, dim), A_g @ x_g + server_noise * rand(n))
        self.dim = dim
        self.calls = {"f": 0, "g": 0}

    @staticmethod
    def wrap(x: torch.Tensor) -> Weights:
        return Weights({"x": x.clone()})

    def grad_h(self, x: torch.Tensor) -> torch.Tensor:
        return (self.f.grad(x) + self.g.grad(x)) / 2

    def grad_h1(self, x: torch.Tensor) -> torch.Tensor:
        return (self.f1.grad(x) + self.g1.grad(x)) / 2

    def optimum(self) -> torch.Tensor:
        H = (self.f.hessian + self.g.hessian) / 2
        return torch.linalg.solve(H, -self.grad_h(torch.zeros(self.dim, dtype=torch.float64)))

    def num_clients(self, group: str) -> int:
        return 1

    def clients(self, group: str, points: Sequence[Weights], seed, *, subset=None, snapshot=None) -> list[Weights]:
        self.calls[group] += 1
        loss = self.f if group == "f" else self.g
        base = loss.grad(snapshot["x"]) if snapshot is not None else 0.0
        return [self.wrap(loss.grad(p["x"]) - base) for p in points]

    def server(self, group: str, points: Sequence[Weights], seed) -> list[Weights]:
        loss = self.f1 if group == "f" else self.g1
        return [self.wrap(loss.grad(p["x"])) for p in points]

    def full_communication(self, points: Sequence[Weights]) -> dict[str, list[Weights]]:
        return {group: self.clients(group, points, None) for group in ("f", "g")}

    def local_updates(
        self, x: Weights, *, epochs: int, lr: float, batch_size, seed, subsets, prox: float = 0.0
    ) -> dict[str, Weights]:
        """Full-batch gradient descent on G(w) + (prox/2)‖w − x‖²: one step per epoch."""
        out = {}
        for group in subsets:
            self.calls[group] += 1
            loss = self.f if group == "f" else self.g
            w = x["x"].clone()
            for _ in range(epochs):
                w = w - lr * (loss.grad(w) + prox * (w - x["x"]))
            out[group] = self.wrap(w)
        return out

    def local_runs(self, x: Weights, *, epochs: int, lr: float, batch_size, seed, subsets, drift):
        """Full-batch gradient descent on G(w) + ⟨d, w⟩ (one client per group); its model and mean
        gradient, stacked (one row)."""
        out = {}
        for group in subsets:
            self.calls[group] += 1
            loss = self.f if group == "f" else self.g
            w, total = x["x"].clone(), torch.zeros_like(x["x"])
            for _ in range(epochs):
                grad = loss.grad(w)
                total += grad
                w = w - lr * (grad + drift[group]["x"][0])
            out[group] = (Weights({"x": w.unsqueeze(0)}), Weights({"x": (total / epochs).unsqueeze(0)}))
        return out

    def client_sizes(self, group: str):
        import numpy as np

        return np.array([len((self.f if group == "f" else self.g).b)])

    def argmin(self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance=None) -> Solution:
        # (H1 + I/θ) x = −v + c/θ − ∇h1(0)
        H1 = (self.f1.hessian + self.g1.hessian) / 2
        rhs = -linear["x"] + center["x"] / theta - self.grad_h1(torch.zeros(self.dim, dtype=torch.float64))
        x = torch.linalg.solve(H1 + torch.eye(self.dim, dtype=torch.float64) / theta, rhs)
        return Solution(self.wrap(x), float("nan"), 0, 0.0)
