"""A least-squares federation with closed-form gradients and argmin, for testing method maths.

Groups f and g of one client each (ids 0 and 1), the server's f1 and g1, λ = ½ each. Client
programs run on exact gradients with ``torch.optim.SGD`` as the reference optimizer: full-batch
(one step per epoch) with ``batch_size`` None, else on consecutive rows of ``batch_size``, in
order, every epoch (⌈n_i / b⌉ steps: unequal for clients of unequal sizes, ``n_g``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedsweep.algorithms.programs import Clients
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

    def batches(self, batch_size: int | None) -> list[LeastSquares]:
        """One epoch's minibatches: consecutive rows, in order (None: the whole shard)."""
        if batch_size is None:
            return [self]
        return [LeastSquares(self.A[i : i + batch_size], self.b[i : i + batch_size]) for i in range(0, len(self.b), batch_size)]


def run_program(program, x: torch.Tensor, grad, *, shared=None, rows=None) -> dict[str, torch.Tensor]:
    """One client's reply to ``program`` from ``x`` with full-batch gradients ``grad(w)``: one step per
    epoch (``grad`` a list: one step per minibatch gradient in it), the direction applied by
    ``torch.optim.SGD`` (momentum, weight decay), the out-of-momentum part by hand. The reference
    the engines are checked against."""
    opt = program.optimizer
    w = torch.nn.Parameter(x.clone())
    sgd = torch.optim.SGD([w], lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=opt.nesterov)
    steps = torch.zeros(1, dtype=x.dtype)

    def clients() -> Clients:
        return Clients(x=[x], shared={k: [v] for k, v in (shared or {}).items()},
                       rows={k: [v.unsqueeze(0)] for k, v in (rows or {}).items()}, steps=steps.clone())  # fmt: skip

    state = program.init(clients(), [w.detach().unsqueeze(0)])
    for _ in range(program.epochs):
        for minibatch_grad in grad if isinstance(grad, list) else [grad]:
            step = program.step(clients(), [w.detach().unsqueeze(0)], [minibatch_grad(w.detach()).unsqueeze(0)], state)
            w.grad = step.direction[0][0].clone()
            sgd.step()
            if step.outside is not None:
                with torch.no_grad():
                    w -= opt.lr * step.outside[0][0]
            state = step.state or state
            steps += 1
    reply = program.reply(clients(), [w.detach().unsqueeze(0)], state)
    return {k: (v[0] if isinstance(v, torch.Tensor) else v[0][0]) for k, v in reply.items()}


class QuadraticOracle:
    """Exact gradients and exact argmin; counts contacts per group."""

    deterministic = True
    groups = ("f", "g")
    server_groups = ("f", "g")

    def __init__(self, *, dim: int = 8, n: int = 40, n_g: int | None = None, server_noise: float = 0.1, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        dt = torch.float64

        def rand(*shape):
            return torch.randn(*shape, generator=gen, dtype=dt)

        A_f, A_g = rand(n, dim), rand(n if n_g is None else n_g, dim) * 1.5
        x_f, x_g = rand(dim), rand(dim) + 2.0  # heterogeneous optima
        self.f = LeastSquares(A_f, A_f @ x_f)
        self.g = LeastSquares(A_g, A_g @ x_g)
        self.f1 = LeastSquares(A_f + server_noise * rand(n, dim), A_f @ x_f + server_noise * rand(n))
        self.g1 = LeastSquares(A_g + server_noise * rand(*A_g.shape), A_g @ x_g + server_noise * rand(len(A_g)))
        self.dim = dim
        self.calls = {"f": 0, "g": 0}
        self.losses = {"f": self.f, "g": self.g}

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

    def group_weight(self, group: str) -> float:
        return 0.5

    def clients(self, group: str | None = None) -> np.ndarray:
        return np.arange(2) if group is None else np.array([self.groups.index(group)])

    def client_sizes(self) -> np.ndarray:
        return np.array([len(self.f.b), len(self.g.b)])

    def objective_weights(self) -> np.ndarray:
        return np.array([0.5, 0.5])

    def group_gradients(self, group: str, points: Sequence[Weights], seed, *, subset=None, snapshot=None):
        self.calls[group] += 1
        loss = self.losses[group]
        base = loss.grad(snapshot["x"]) if snapshot is not None else 0.0
        return [self.wrap(loss.grad(p["x"]) - base) for p in points]

    def gradients(self, points: Sequence[Weights], *, clients, weights, seed) -> list[Weights]:
        out = [torch.zeros(self.dim, dtype=torch.float64) for _ in points]
        for i, w in zip(clients, weights):
            group = self.groups[int(i)]
            self.calls[group] += 1
            for k, p in enumerate(points):
                out[k] = out[k] + w * self.losses[group].grad(p["x"])
        return [self.wrap(o) for o in out]

    def server(self, group: str, points: Sequence[Weights], seed) -> list[Weights]:
        loss = self.f1 if group == "f" else self.g1
        return [self.wrap(loss.grad(p["x"])) for p in points]

    def full_communication(self, points: Sequence[Weights]) -> dict[str, list[Weights]]:
        return {group: self.group_gradients(group, points, None) for group in self.groups}

    def _replies(self, program, x, clients, shared, rows):
        shared = {k: v["x"] for k, v in (shared or {}).items()}
        for r, i in enumerate(clients):
            group = self.groups[int(i)]
            self.calls[group] += 1
            own = {k: v.tensors[0][r] for k, v in (rows or {}).items()}  # a vector, or a number, per client
            grads = [loss.grad for loss in self.losses[group].batches(program.batch_size)]
            yield run_program(program, x["x"], grads, shared=shared, rows=own)

    def train(self, program, x: Weights, *, clients, weights, seed, shared=None, rows=None):
        total = {}
        for w, reply in zip(weights, self._replies(program, x, clients, shared, rows)):
            for k, v in reply.items():
                total[k] = total.get(k, 0.0) + w * v
        return {k: (self.wrap(v) if v.dim() else float(v)) for k, v in total.items()}

    def train_each(self, program, x: Weights, *, clients, seed, shared=None, rows=None):
        replies = list(self._replies(program, x, clients, shared, rows))
        return {k: Weights({"x" if replies[0][k].dim() else "value": torch.stack([r[k] for r in replies])})
                for k in replies[0]}  # fmt: skip

    def argmin(self, linear: Weights, center: Weights, theta: float, seed: int, *, tolerance=None) -> Solution:
        # (H1 + I/θ) x = −v + c/θ − ∇h1(0)
        H1 = (self.f1.hessian + self.g1.hessian) / 2
        rhs = -linear["x"] + center["x"] / theta - self.grad_h1(torch.zeros(self.dim, dtype=torch.float64))
        x = torch.linalg.solve(H1 + torch.eye(self.dim, dtype=torch.float64) / theta, rhs)
        return Solution(self.wrap(x), float("nan"), 0, 0.0)
